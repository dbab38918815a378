sg_unit_test(auth sg_auth)
