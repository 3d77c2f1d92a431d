#include "io/hdf5_file.h"

#include <hdf5.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <mutex>

#include <ATen/ATen.h>

#include "core/error.h"

namespace condense {
namespace {

void silence_hdf5() {
  static std::once_flag once;
  std::call_once(once, [] {
    // No library shutdown at exit: when a write fails (disk full), H5Fclose fails too and
    // leaves the file open, and closing it again at exit crashed (HDF5 1.10, a segfault in
    // H5F__close_cb after the error was printed). Every file is closed by its H5File, and a
    // file whose close failed is already refused and removed (io/atomic_file.h).
    H5dont_atexit();
    H5Eset_auto2(H5E_DEFAULT, nullptr, nullptr);
  });
}

// ": <the OS's reason>" when the last failed call set errno (HDF5 keeps the POSIX error of its
// file driver there: "No space left on device", "Read-only file system"), else "".
std::string os_reason(int err) { return err != 0 ? fmt::format(": {}", std::strerror(err)) : ""; }

// RAII for an hid_t with its matching close function.
class Handle {
 public:
  Handle(hid_t id, herr_t (*close)(hid_t)) : id_(id), close_(close) {}
  ~Handle() { if (id_ >= 0) close_(id_); }
  Handle(const Handle&) = delete;
  Handle& operator=(const Handle&) = delete;
  Handle(Handle&& o) noexcept : id_(o.id_), close_(o.close_) { o.id_ = -1; }
  hid_t get() const { return id_; }
  bool ok() const { return id_ >= 0; }
 private:
  hid_t id_;
  herr_t (*close_)(hid_t);
};

std::string display(const std::string& name) { return name.empty() ? "/" : name; }

// Object-creation properties without modification times: HDF5 stamps every dataset and group
// header with its creation time by default, so two writes of the same tensors differed in a few
// bytes. Without the stamps, the same content gives the same file bit for bit (token stores and
// checkpoints can be compared with cmp and hashed).
Handle untimed(hid_t property_class) {
  Handle plist(H5Pcreate(property_class), H5Pclose);
  H5Pset_obj_track_times(plist.get(), 0);
  return plist;
}

// Datasets of 4 KiB or more are stored in chunks of at most 64 MiB (whole rows of the first
// dimension) with HDF5's Fletcher-32 checksum per chunk, which HDF5 verifies on every read: a flipped bit in a checkpoint or token store is then a read error naming the dataset,
// where before a weight that stayed finite loaded silently different (found by a reliability
// audit: one mantissa bit flipped in a checkpoint, resumed and trained on). Deterministic, so
// the same content still gives the same file bit for bit; files written before read as before.
void checksummed(hid_t dcpl, const std::vector<hsize_t>& dims, size_t element_bytes) {
  hsize_t numel = 1;
  for (hsize_t d : dims) numel *= d;
  // Below 4 KiB (norm weights, scalars) the chunk index would outweigh the data: stored plain.
  if (dims.empty() || numel * element_bytes < 4096) return;
  hsize_t row = element_bytes;
  for (size_t i = 1; i < dims.size(); ++i) row *= dims[i];
  if (row > (hsize_t{1} << 31)) return;  // a chunk must stay below 4 GiB: keep such rows plain
  std::vector<hsize_t> chunk = dims;
  chunk[0] = std::clamp<hsize_t>((hsize_t{64} << 20) / row, 1, dims[0]);
  H5Pset_chunk(dcpl, static_cast<int>(chunk.size()), chunk.data());
  H5Pset_fletcher32(dcpl);
}

// Creates the missing groups above `name` ("a/b/c" -> "a", "a/b") without time stamps (the
// link property "create intermediate groups" would make them with the default, timed ones).
void create_parent_groups(hid_t file, const std::string& name) {
  for (size_t slash = name.find('/', 1); slash != std::string::npos;
       slash = name.find('/', slash + 1)) {
    std::string group = name.substr(0, slash);
    if (H5Lexists(file, group.c_str(), H5P_DEFAULT) > 0) continue;
    Handle gcpl = untimed(H5P_GROUP_CREATE);
    Handle g(H5Gcreate2(file, group.c_str(), H5P_DEFAULT, gcpl.get(), H5P_DEFAULT), H5Gclose);
  }
}

hid_t native_type(at::ScalarType t) {
  switch (t) {
    case at::kFloat: return H5T_NATIVE_FLOAT;
    case at::kDouble: return H5T_NATIVE_DOUBLE;
    case at::kLong: return H5T_NATIVE_INT64;
    case at::kInt: return H5T_NATIVE_INT32;
    case at::kShort: return H5T_NATIVE_INT16;
    case at::kByte: return H5T_NATIVE_UINT8;
    case at::kBool: return H5T_NATIVE_UINT8;
    case at::kBFloat16: return H5T_NATIVE_UINT16;
    case at::kHalf: return H5T_NATIVE_UINT16;
    default: return -1;
  }
}

const char* tagged_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return "bfloat16";
    case at::kHalf: return "float16";
    case at::kBool: return "bool";
    default: return nullptr;
  }
}

bool has_checksum(hid_t dcpl) {
  return H5Pget_filter_by_id2(dcpl, H5Z_FILTER_FLETCHER32, nullptr, nullptr, nullptr, 0, nullptr,
                              nullptr) >= 0;
}

// Why a read of `ds` failed, as far as can be told without HDF5's error stack.
std::string read_failure(hid_t ds) {
  Handle dcpl(H5Dget_create_plist(ds), H5Pclose);
  if (dcpl.ok() && has_checksum(dcpl.get()))
    return "its checksum does not match or the file is truncated: the file is corrupt";
  return "truncated or corrupt file?";
}

// Refuses a read of `bytes` from dataset `ds` that its file cannot hold: what condense writes
// (contiguous, or checksummed chunks) stores at least its raw bytes, so a dataspace or string
// type claiming more than the file allocated for it is corruption, and allocating first would
// ask the OS for whatever the bytes claim (found by tests/fuzz/fuzz_hdf5_readers.cpp: a flipped
// dimension asked for 1.3 TB).
void check_stored_size(hid_t ds, uint64_t bytes, const std::string& where) {
  Handle dcpl(H5Dget_create_plist(ds), H5Pclose);
  if (!dcpl.ok()) return;
  // Contiguous data, or chunks whose only filter is the checksum (condense's own: every chunk is
  // stored whole, plus 4 bytes), must hold at least the bytes the shape claims; other filters
  // (compression) store less, and are left to the read itself.
  const H5D_layout_t layout = H5Pget_layout(dcpl.get());
  const bool checksummed_only =
      layout == H5D_CHUNKED && H5Pget_nfilters(dcpl.get()) == 1 && has_checksum(dcpl.get());
  if (layout != H5D_CONTIGUOUS && !checksummed_only) return;
  const uint64_t stored = H5Dget_storage_size(ds);
  CONDENSE_CHECK(bytes <= stored, "{}: claims {} bytes but the file stores {} for it (truncated "
                 "or corrupt file?)", where, bytes, stored);
}

}  // namespace

H5File H5File::open_read(const std::string& path) {
  silence_hdf5();
  CONDENSE_CHECK(std::filesystem::exists(path), "{}: no such file", path);
  CONDENSE_CHECK(!std::filesystem::is_directory(path), "{}: is a directory, expected an HDF5 file",
                 path);
  htri_t is = H5Fis_hdf5(path.c_str());
  CONDENSE_CHECK(is > 0, "{}: not an HDF5 file (truncated or corrupt?)", path);
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  CONDENSE_CHECK(id >= 0, "{}: cannot open HDF5 file (truncated or corrupt?)", path);
  return H5File(path, id);
}

H5File H5File::create(const std::string& path) {
  silence_hdf5();
  errno = 0;
  hid_t id = H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT);
  CONDENSE_CHECK(id >= 0, "{}: cannot create HDF5 file{}", path, os_reason(errno));
  return H5File(path, id);
}

H5File H5File::open_write(const std::string& path) {
  silence_hdf5();
  CONDENSE_CHECK(std::filesystem::exists(path), "{}: no such file", path);
  errno = 0;
  hid_t id = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  CONDENSE_CHECK(id >= 0, "{}: cannot open HDF5 file for writing{}", path, os_reason(errno));
  return H5File(path, id);
}

void H5File::remove(const std::string& name) {
  if (has(name)) H5Ldelete(id_, name.c_str(), H5P_DEFAULT);
}

void H5File::remove_attr(const std::string& object, const std::string& key) {
  if (has_attr(object, key))
    H5Adelete_by_name(id_, display(object).c_str(), key.c_str(), H5P_DEFAULT);
}

H5File::H5File(H5File&& o) noexcept : path_(std::move(o.path_)), id_(o.id_) { o.id_ = -1; }
H5File& H5File::operator=(H5File&& o) noexcept {
  if (this != &o) {
    if (id_ >= 0) H5Fclose(id_);
    path_ = std::move(o.path_);
    id_ = o.id_;
    o.id_ = -1;
  }
  return *this;
}
H5File::~H5File() {
  if (id_ >= 0) H5Fclose(id_);
}

void H5File::close() {
  if (id_ < 0) return;
  errno = 0;
  herr_t f = H5Fflush(id_, H5F_SCOPE_GLOBAL);
  const int err = errno;
  herr_t c = H5Fclose(id_);
  id_ = -1;
  CONDENSE_CHECK(f >= 0 && c >= 0, "{}: error flushing/closing HDF5 file{}", path_, os_reason(err));
}

bool H5File::has(const std::string& name) const {
  if (name.empty()) return true;
  size_t pos = 0;
  while (true) {
    size_t next = name.find('/', pos);
    std::string prefix = name.substr(0, next);
    if (H5Lexists(id_, prefix.c_str(), H5P_DEFAULT) <= 0) return false;
    if (next == std::string::npos) return true;
    pos = next + 1;
  }
}

std::vector<std::string> H5File::datasets(const std::string& group) const {
  std::string g = group.empty() ? "/" : group;
  CONDENSE_CHECK(has(group), "{}: no group '{}'", path_, g);
  struct Ctx { std::vector<std::string> names; };
  Ctx ctx;
  auto cb = [](hid_t gid, const char* name, const H5L_info_t*, void* data) -> herr_t {
    hid_t obj = H5Oopen(gid, name, H5P_DEFAULT);
    if (obj < 0) return 0;
    if (H5Iget_type(obj) == H5I_DATASET) static_cast<Ctx*>(data)->names.emplace_back(name);
    H5Oclose(obj);
    return 0;
  };
  Handle gid(H5Gopen2(id_, g.c_str(), H5P_DEFAULT), H5Gclose);
  CONDENSE_CHECK(gid.ok(), "{}: '{}' is not a group", path_, g);
  H5Literate(gid.get(), H5_INDEX_NAME, H5_ITER_NATIVE, nullptr, cb, &ctx);
  std::sort(ctx.names.begin(), ctx.names.end());
  return ctx.names;
}

std::vector<int64_t> H5File::shape(const std::string& name) const {
  CONDENSE_CHECK(has(name), "{}: missing dataset '{}'", path_, name);
  Handle ds(H5Dopen2(id_, name.c_str(), H5P_DEFAULT), H5Dclose);
  CONDENSE_CHECK(ds.ok(), "{}: '{}' is not a dataset", path_, name);
  Handle space(H5Dget_space(ds.get()), H5Sclose);
  int rank = H5Sget_simple_extent_ndims(space.get());
  CONDENSE_CHECK(rank >= 0, "{}: cannot read shape of '{}'", path_, name);
  std::vector<hsize_t> dims(rank);
  H5Sget_simple_extent_dims(space.get(), dims.data(), nullptr);
  return std::vector<int64_t>(dims.begin(), dims.end());
}

void H5File::write_tensor(const std::string& name, const at::Tensor& tensor) {
  CONDENSE_CHECK(id_ >= 0, "{}: file is closed", path_);
  at::Tensor t = tensor.detach().to(at::kCPU).contiguous();
  hid_t mem_type = native_type(t.scalar_type());
  CONDENSE_CHECK(mem_type >= 0, "{}: tensor '{}' has unsupported dtype {}", path_, name,
                 c10::toString(t.scalar_type()));
  if (has(name)) H5Ldelete(id_, name.c_str(), H5P_DEFAULT);
  std::vector<hsize_t> dims(t.sizes().begin(), t.sizes().end());
  Handle space(dims.empty() ? H5Screate(H5S_SCALAR)
                            : H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr),
               H5Sclose);
  errno = 0;
  create_parent_groups(id_, name);
  Handle dcpl = untimed(H5P_DATASET_CREATE);
  checksummed(dcpl.get(), dims, t.element_size());
  Handle ds(H5Dcreate2(id_, name.c_str(), mem_type, space.get(), H5P_DEFAULT, dcpl.get(),
                       H5P_DEFAULT),
            H5Dclose);
  CONDENSE_CHECK(ds.ok(), "{}: cannot create dataset '{}'{}", path_, name, os_reason(errno));
  if (t.numel() > 0) {
    errno = 0;
    herr_t rc = H5Dwrite(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, t.data_ptr());
    CONDENSE_CHECK(rc >= 0, "{}: cannot write dataset '{}'{}", path_, name, os_reason(errno));
  }
  if (const char* tag = tagged_dtype(t.scalar_type())) set_attr(name, "dtype", std::string(tag));
}

namespace {

at::ScalarType stored_dtype(hid_t type, const std::string& tag, const std::string& where) {
  H5T_class_t cls = H5Tget_class(type);
  size_t size = H5Tget_size(type);
  if (cls == H5T_FLOAT) {
    if (size == 4) return at::kFloat;
    if (size == 8) return at::kDouble;
  } else if (cls == H5T_INTEGER) {
    bool is_signed = H5Tget_sign(type) == H5T_SGN_2;
    if (size == 2 && !is_signed) {
      if (tag == "bfloat16") return at::kBFloat16;
      if (tag == "float16") return at::kHalf;
    }
    if (size == 1 && !is_signed) return tag == "bool" ? at::kBool : at::kByte;
    if (is_signed && size == 8) return at::kLong;
    if (is_signed && size == 4) return at::kInt;
    if (is_signed && size == 2) return at::kShort;
  }
  fail("{}: unsupported stored type (class {}, {} bytes)", where, static_cast<int>(cls), size);
}

}  // namespace

at::Tensor H5File::read_tensor(const std::string& name) const {
  return read_slice(name, 0, -1);
}

at::Tensor H5File::read_slice(const std::string& name, int64_t offset, int64_t count) const {
  std::vector<int64_t> dims = shape(name);
  std::string where = path_ + ": dataset '" + name + "'";
  std::string tag = has_attr(name, "dtype") ? attr_string(name, "dtype") : "";
  Handle ds(H5Dopen2(id_, name.c_str(), H5P_DEFAULT), H5Dclose);
  Handle ftype(H5Dget_type(ds.get()), H5Tclose);
  at::ScalarType dtype = stored_dtype(ftype.get(), tag, where);
  hid_t mem_type = native_type(dtype);
  Handle file_space(H5Dget_space(ds.get()), H5Sclose);
  at::Tensor out;
  if (count < 0) {
    uint64_t numel = 1;
    for (int64_t d : dims) {
      CONDENSE_CHECK(d == 0 || numel <= UINT64_MAX / static_cast<uint64_t>(d),
                     "{}: shape overflows (corrupt file?)", where);
      numel *= static_cast<uint64_t>(d);
    }
    const uint64_t element = c10::elementSize(dtype);
    CONDENSE_CHECK(numel <= UINT64_MAX / element, "{}: shape overflows (corrupt file?)", where);
    check_stored_size(ds.get(), numel * element, where);
    out = at::empty(dims, at::TensorOptions().dtype(dtype));
    if (out.numel() == 0) return out;
    herr_t rc = H5Dread(ds.get(), mem_type, H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data_ptr());
    CONDENSE_CHECK(rc >= 0, "{}: read failed ({})", where, read_failure(ds.get()));
    return out;
  }
  CONDENSE_CHECK(dims.size() == 1, "{}: slice read needs a 1-D dataset", where);
  CONDENSE_CHECK(offset >= 0 && offset + count <= dims[0],
                 "{}: slice [{}, {}) out of range (length {})", where, offset, offset + count,
                 dims[0]);
  check_stored_size(ds.get(), static_cast<uint64_t>(dims[0]) * c10::elementSize(dtype), where);
  out = at::empty({count}, at::TensorOptions().dtype(dtype));
  if (count == 0) return out;
  hsize_t start = offset, n = count;
  H5Sselect_hyperslab(file_space.get(), H5S_SELECT_SET, &start, nullptr, &n, nullptr);
  Handle mem_space(H5Screate_simple(1, &n, nullptr), H5Sclose);
  herr_t rc = H5Dread(ds.get(), mem_type, mem_space.get(), file_space.get(), H5P_DEFAULT,
                      out.data_ptr());
  CONDENSE_CHECK(rc >= 0, "{}: read failed ({})", where, read_failure(ds.get()));
  return out;
}

void H5File::write_string(const std::string& name, const std::string& value) {
  if (has(name)) H5Ldelete(id_, name.c_str(), H5P_DEFAULT);
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, value.size()));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  create_parent_groups(id_, name);
  Handle dcpl = untimed(H5P_DATASET_CREATE);
  Handle ds(H5Dcreate2(id_, name.c_str(), type.get(), space.get(), H5P_DEFAULT, dcpl.get(),
                       H5P_DEFAULT),
            H5Dclose);
  CONDENSE_CHECK(ds.ok(), "{}: cannot create string dataset '{}'", path_, name);
  std::string padded = value.empty() ? std::string(1, '\0') : value;
  CONDENSE_CHECK(H5Dwrite(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, padded.data()) >= 0,
                 "{}: cannot write string dataset '{}'", path_, name);
}

std::string H5File::read_string(const std::string& name) const {
  CONDENSE_CHECK(has(name), "{}: missing dataset '{}'", path_, name);
  Handle ds(H5Dopen2(id_, name.c_str(), H5P_DEFAULT), H5Dclose);
  Handle type(H5Dget_type(ds.get()), H5Tclose);
  CONDENSE_CHECK(H5Tget_class(type.get()) == H5T_STRING && !H5Tis_variable_str(type.get()),
                 "{}: '{}' is not a fixed-length string dataset", path_, name);
  check_stored_size(ds.get(), H5Tget_size(type.get()),
                    fmt::format("{}: string '{}'", path_, name));
  std::string out(H5Tget_size(type.get()), '\0');
  CONDENSE_CHECK(H5Dread(ds.get(), type.get(), H5S_ALL, H5S_ALL, H5P_DEFAULT, out.data()) >= 0,
                 "{}: cannot read string '{}' (corrupt file?)", path_, name);
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

void H5File::write_bytes(const std::string& name, const std::string& bytes) {
  at::Tensor t = at::empty({static_cast<int64_t>(bytes.size())}, at::kByte);
  if (!bytes.empty()) std::memcpy(t.data_ptr(), bytes.data(), bytes.size());
  write_tensor(name, t);
}

std::string H5File::read_bytes(const std::string& name) const {
  at::Tensor t = read_tensor(name);
  CONDENSE_CHECK(t.scalar_type() == at::kByte && t.dim() == 1,
                 "{}: '{}' is not a 1-D uint8 dataset", path_, name);
  return std::string(static_cast<const char*>(t.data_ptr()), t.numel());
}

namespace {

void write_attr(hid_t file, const std::string& path, const std::string& object,
                const std::string& key, hid_t type, const void* value) {
  std::string obj = object.empty() ? "/" : object;
  Handle o(H5Oopen(file, obj.c_str(), H5P_DEFAULT), H5Oclose);
  CONDENSE_CHECK(o.ok(), "{}: no object '{}' for attribute '{}'", path, obj, key);
  if (H5Aexists(o.get(), key.c_str()) > 0) H5Adelete(o.get(), key.c_str());
  Handle space(H5Screate(H5S_SCALAR), H5Sclose);
  Handle a(H5Acreate2(o.get(), key.c_str(), type, space.get(), H5P_DEFAULT, H5P_DEFAULT),
           H5Aclose);
  CONDENSE_CHECK(a.ok() && H5Awrite(a.get(), type, value) >= 0,
                 "{}: cannot write attribute '{}' on '{}'", path, key, obj);
}

}  // namespace

void H5File::set_attr(const std::string& object, const std::string& key, const std::string& v) {
  Handle type(H5Tcopy(H5T_C_S1), H5Tclose);
  H5Tset_size(type.get(), std::max<size_t>(1, v.size()));
  H5Tset_strpad(type.get(), H5T_STR_NULLPAD);
  H5Tset_cset(type.get(), H5T_CSET_UTF8);
  std::string padded = v.empty() ? std::string(1, '\0') : v;
  write_attr(id_, path_, object, key, type.get(), padded.data());
}
void H5File::set_attr(const std::string& object, const std::string& key, int64_t v) {
  write_attr(id_, path_, object, key, H5T_NATIVE_INT64, &v);
}
void H5File::set_attr(const std::string& object, const std::string& key, double v) {
  write_attr(id_, path_, object, key, H5T_NATIVE_DOUBLE, &v);
}

bool H5File::has_attr(const std::string& object, const std::string& key) const {
  std::string obj = object.empty() ? "/" : object;
  if (!has(object)) return false;
  return H5Aexists_by_name(id_, obj.c_str(), key.c_str(), H5P_DEFAULT) > 0;
}

namespace {

Handle open_attr(hid_t file, const std::string& path, const std::string& object,
                 const std::string& key) {
  std::string obj = object.empty() ? "/" : object;
  hid_t a = H5Aopen_by_name(file, obj.c_str(), key.c_str(), H5P_DEFAULT, H5P_DEFAULT);
  CONDENSE_CHECK(a >= 0, "{}: missing attribute '{}' on '{}'", path, key, obj);
  return Handle(a, H5Aclose);
}

}  // namespace

std::string H5File::attr_string(const std::string& object, const std::string& key) const {
  Handle a = open_attr(id_, path_, object, key);
  Handle type(H5Aget_type(a.get()), H5Tclose);
  CONDENSE_CHECK(H5Tget_class(type.get()) == H5T_STRING && !H5Tis_variable_str(type.get()),
                 "{}: attribute '{}' on '{}' is not a fixed-length string", path_, key,
                 display(object));
  std::string out(H5Tget_size(type.get()), '\0');
  CONDENSE_CHECK(H5Aread(a.get(), type.get(), out.data()) >= 0, "{}: cannot read attribute '{}'",
                 path_, key);
  while (!out.empty() && out.back() == '\0') out.pop_back();
  return out;
}

int64_t H5File::attr_int(const std::string& object, const std::string& key) const {
  Handle a = open_attr(id_, path_, object, key);
  int64_t v = 0;
  CONDENSE_CHECK(H5Aread(a.get(), H5T_NATIVE_INT64, &v) >= 0,
                 "{}: attribute '{}' on '{}' is not an integer", path_, key, display(object));
  return v;
}

double H5File::attr_double(const std::string& object, const std::string& key) const {
  Handle a = open_attr(id_, path_, object, key);
  double v = 0;
  CONDENSE_CHECK(H5Aread(a.get(), H5T_NATIVE_DOUBLE, &v) >= 0,
                 "{}: attribute '{}' on '{}' is not a number", path_, key, display(object));
  return v;
}

}  // namespace condense
