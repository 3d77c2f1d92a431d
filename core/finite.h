// Refusing weights that hold NaN or inf where they are read from a file, so that a corrupt
// file, or one written by a diverged run, fails there, naming the file and the tensor, and not
// at first use (or, for an import, in every later command that reads what it wrote).
#pragma once
#include <ATen/ATen.h>

#include <string>

#include "core/error.h"

namespace condense {

inline void check_finite(const at::Tensor& t, const std::string& file, const std::string& name) {
  if (!at::isFloatingType(t.scalar_type())) return;
  const int64_t bad = t.numel() - at::isfinite(t).sum().item<int64_t>();
  CONDENSE_CHECK(bad == 0, "{}: tensor '{}' holds {} non-finite values (NaN or inf) of {}; the "
                 "file is corrupt or was written by a diverged run", file, name, bad, t.numel());
}

}  // namespace condense
