sg_unit_test(node sg_node)
