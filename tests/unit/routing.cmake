sg_unit_test(routing sg_routing)
