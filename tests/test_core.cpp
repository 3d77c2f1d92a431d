// Tests for core/: SHA-256 against FIPS 180-4 test vectors, error formatting.
#include <gtest/gtest.h>

#include <string>

#include "core/base64.h"
#include "core/error.h"
#include "core/hash.h"

namespace condense {

TEST(Sha256, FipsVectors) {
  EXPECT_EQ(sha256_hex(""), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(sha256_hex("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq"),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  EXPECT_EQ(sha256_hex(std::string(1000000, 'a')),
            "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Error, CheckFormatsMessage) {
  try {
    CONDENSE_CHECK(1 + 1 == 3, "file {}: key '{}' expected {}", "a.yaml", "lr", "a number");
    FAIL() << "no throw";
  } catch (const Error& e) {
    EXPECT_STREQ(e.what(), "file a.yaml: key 'lr' expected a number");
  }
}

}  // namespace condense

TEST(Base64, Rfc4648VectorsRoundTripAndErrors) {
  using condense::base64_decode;
  using condense::base64_encode;
  const std::pair<const char*, const char*> vectors[] = {{"", ""}, {"f", "Zg=="}, {"fo", "Zm8="},
      {"foo", "Zm9v"}, {"foob", "Zm9vYg=="}, {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
  for (auto [plain, coded] : vectors) {
    EXPECT_EQ(base64_encode(plain), coded);
    EXPECT_EQ(base64_decode(coded, "t"), plain);
  }
  std::string all;
  for (int i = 0; i < 256; ++i) all += static_cast<char>(i);
  for (size_t n = 0; n <= all.size(); n += 37) EXPECT_EQ(base64_decode(base64_encode(all.substr(0, n)), "t"), all.substr(0, n));
  EXPECT_THROW(base64_decode("Zm9", "x.gguf:key"), condense::Error);
  EXPECT_THROW(base64_decode("Zm9*", "x.gguf:key"), condense::Error);
}
