// libFuzzer target for the strict recipe parser (recipes/recipe_parser.cpp, recipes/
// yaml_binder.cpp): any text must either parse or raise condense::Error (naming the source);
// a recipe that parses must survive the round trip the checkpoints rely on: to_yaml gives a
// text that parses back to the same resolved recipe. Crashes, sanitizer reports, other
// exception types (a yaml-cpp exception escaping) and a failed round trip are bugs. Built by
// tests/fuzz/run_fuzz.sh.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "core/error.h"
#include "recipes/recipe_parser.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  condense::RunConfig cfg;
  try {
    cfg = condense::parse_recipe(text, "fuzz.yaml");
  } catch (const condense::Error&) {
    return 0;
  }
  const std::string yaml = condense::to_yaml(cfg);
  // A resolved recipe parses (an Error here is a bug too: it would escape the catch below).
  const std::string again = condense::to_yaml(condense::parse_recipe(yaml, "round trip"));
  if (again != yaml) std::abort();
  return 0;
}
