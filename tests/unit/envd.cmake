sg_unit_test(envd sg_envd_core)
