// Translation unit that owns the shared precompiled header (core/torch_pch.h).
