// Errors: library code throws condense::Error with a message that names the file, key or
// tensor involved and what was expected; only launch/main.cpp catches (see README).
#pragma once
#include <fmt/format.h>
#include <stdexcept>
#include <string>

namespace condense {

class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message) : std::runtime_error(message) {}
};

template <typename... Args>
[[noreturn]] void fail(fmt::format_string<Args...> f, Args&&... args) {
  throw Error(fmt::format(f, std::forward<Args>(args)...));
}

}  // namespace condense

// CONDENSE_CHECK(cond, "fmt {}", args...): throws condense::Error with the formatted message.
#define CONDENSE_CHECK(cond, ...)            \
  do {                                       \
    if (!(cond)) ::condense::fail(__VA_ARGS__); \
  } while (0)
