sg_unit_test(config sg_config PkgConfig::YAML)
# The test compares docs/configuration.md and loads deploy/*.example.yaml from the source tree.
target_compile_definitions(test_config PRIVATE SG_SOURCE_DIR="${CMAKE_SOURCE_DIR}")
