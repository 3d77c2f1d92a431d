// Precompiled header shared by every condense library: the LibTorch and standard headers
// that nearly every translation unit needs. Keep it to stable, heavy headers.
#pragma once
#include <torch/torch.h>
#include <fmt/format.h>
#include <string>
#include <vector>
#include <memory>
#include <functional>
