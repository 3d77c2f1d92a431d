// Formatting of tensor shapes for error messages: "[2, 3, 4]".
#pragma once
#include <string>

#include <c10/util/ArrayRef.h>
#include <fmt/format.h>

namespace condense {

inline std::string shape_str(c10::IntArrayRef sizes) {
  return "[" + fmt::format("{}", fmt::join(sizes.begin(), sizes.end(), ", ")) + "]";
}

}  // namespace condense
