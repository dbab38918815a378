sg_unit_test(sched sg_scheduler)
