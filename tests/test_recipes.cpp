// Tests for recipes/: strict YAML recipe parsing (defaults, values, every error class with its
// file:line, key and valid-keys list), overrides, the shipped quickstart recipe, and the
// resolved-recipe round trip and hash.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "core/error.h"
#include "recipes/recipe_parser.h"

namespace condense {
namespace {

// The message of the condense::Error that `fn` throws, or "<no error>".
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "<no error>";
}

// Parses `text` as "r.yaml" and expects an error containing every one of `parts`.
void expect_parse_error(const std::string& text, const std::vector<std::string>& parts,
                        const std::vector<std::string>& overrides = {}) {
  std::string msg = error_of([&] { parse_recipe(text, "r.yaml", overrides); });
  for (const auto& p : parts) {
    EXPECT_NE(msg.find(p), std::string::npos) << "expected '" << p << "' in: " << msg;
  }
}

std::filesystem::path source_dir() {
  if (const char* dir = std::getenv("CONDENSE_SOURCE_DIR")) return dir;
  return std::filesystem::path(__FILE__).parent_path().parent_path();
}

TEST(RecipeParser, EmptyDocumentGivesDefaults) {
  RunConfig c = parse_recipe("", "empty.yaml");
  RunConfig d;
  EXPECT_EQ(to_yaml(c), to_yaml(d));
  EXPECT_EQ(c.kind, "pretrain");
  EXPECT_EQ(c.train.steps, 300);
  EXPECT_EQ(parse_recipe("# only a comment\n", "c.yaml").name, "run");
  EXPECT_EQ(parse_recipe("train:\n", "c.yaml").train.lr, d.train.lr);  // empty section
}

TEST(RecipeParser, FullRecipeValues) {
  const std::string text = R"(kind: pretrain
name: tiny
out_dir: /tmp/out
init: "runs/base/checkpoints/step_100"
model:
  vocab_size: 512
  hidden_size: 64
  num_key_value_heads: 2
  rms_norm_eps: 1e-6
  rope_theta: 500000
  tie_word_embeddings: true
  attention_dropout: 0.1
data:
  corpus: dir
  path: /corpora/books
  vocab_size: 1024
  val_fraction: 0.05
  seq_len: 64
train:
  steps: 50
  lr: 1e-3
  min_lr: 0
  warmup_steps: 5
  beta2: 0.99
  seed: -7
  grad_clip: 0
checkpoint:
  dir: ckpt
  every: 0
  keep: 1
)";
  RunConfig c = parse_recipe(text, "full.yaml");
  EXPECT_EQ(c.name, "tiny");
  EXPECT_EQ(c.out_dir, "/tmp/out");
  EXPECT_EQ(c.init, "runs/base/checkpoints/step_100");
  EXPECT_EQ(c.model.vocab_size, 512);
  EXPECT_EQ(c.model.hidden_size, 64);
  EXPECT_EQ(c.model.num_key_value_heads, 2);
  EXPECT_EQ(c.model.rms_norm_eps, 1e-6);
  EXPECT_EQ(c.model.rope_theta, 500000.0);
  EXPECT_TRUE(c.model.tie_word_embeddings);
  EXPECT_EQ(c.model.attention_dropout, 0.1);
  EXPECT_EQ(c.model.num_hidden_layers, LlamaConfig().num_hidden_layers);  // untouched default
  EXPECT_EQ(c.data.corpus, "dir");
  EXPECT_EQ(c.data.path, "/corpora/books");
  EXPECT_EQ(c.data.vocab_size, 1024);
  EXPECT_EQ(c.data.val_fraction, 0.05);
  EXPECT_EQ(c.data.seq_len, 64);
  EXPECT_EQ(c.train.steps, 50);
  EXPECT_EQ(c.train.lr, 1e-3);
  EXPECT_EQ(c.train.min_lr, 0.0);
  EXPECT_EQ(c.train.warmup_steps, 5);
  EXPECT_EQ(c.train.beta2, 0.99);
  EXPECT_EQ(c.train.seed, -7);
  EXPECT_EQ(c.train.grad_clip, 0.0);
  EXPECT_EQ(c.checkpoint.dir, "ckpt");
  EXPECT_EQ(c.checkpoint.every, 0);
  EXPECT_EQ(c.checkpoint.keep, 1);
}

TEST(RecipeParser, QuickstartLoads) {
  RunConfig c = load_recipe((source_dir() / "recipes" / "quickstart.yaml").string());
  EXPECT_EQ(c.kind, "pretrain");
  EXPECT_EQ(c.name, "quickstart");
  EXPECT_EQ(c.model.hidden_size, 256);
  EXPECT_EQ(c.model.intermediate_size, 688);
  EXPECT_EQ(c.model.num_hidden_layers, 4);
  EXPECT_EQ(c.model.num_attention_heads, 4);
  EXPECT_EQ(c.model.num_key_value_heads, 2);
  EXPECT_EQ(c.model.max_position_embeddings, 512);
  EXPECT_TRUE(c.model.tie_word_embeddings);
  EXPECT_EQ(c.data.corpus, "gcide");
  EXPECT_EQ(c.data.vocab_size, 4096);
  EXPECT_EQ(c.data.seq_len, 128);
  EXPECT_EQ(c.data.batch_size, 8);
  EXPECT_EQ(c.train.steps, 300);
  EXPECT_EQ(c.train.lr, 3e-3);
  EXPECT_EQ(c.train.min_lr, 3e-4);
  EXPECT_EQ(c.train.warmup_steps, 30);
  EXPECT_EQ(c.train.weight_decay, 0.1);
  EXPECT_EQ(c.train.eval_every, 100);
  EXPECT_EQ(c.train.eval_batches, 8);
  EXPECT_EQ(c.train.log_every, 10);
  EXPECT_EQ(c.train.nonfinite, "stop");
  EXPECT_EQ(c.train.max_consecutive_skips, 10);
  EXPECT_EQ(c.checkpoint.every, 100);
  EXPECT_EQ(c.checkpoint.keep, 3);
}

TEST(RecipeParser, MissingFileNamesPath) {
  std::string msg = error_of([] { load_recipe("/nonexistent/dir/recipe.yaml"); });
  EXPECT_NE(msg.find("/nonexistent/dir/recipe.yaml"), std::string::npos) << msg;
}

TEST(RecipeParser, FileErrorsNameThePath) {
  auto path = std::filesystem::temp_directory_path() / "condense_test_recipe_bad.yaml";
  std::ofstream(path) << "name: x\ntrain:\n  lrr: 1\n";
  std::string msg = error_of([&] { load_recipe(path.string()); });
  std::filesystem::remove(path);
  EXPECT_NE(msg.find(path.string() + ":3: unknown key 'train.lrr'"), std::string::npos) << msg;
}

TEST(RecipeErrors, UnknownKeyListsValidKeys) {
  expect_parse_error("name: a\ntrain:\n  steps: 3\n  lrr: 0.1\n",
                     {"r.yaml:4: unknown key 'train.lrr'",
                      "valid keys in 'train': steps, lr, min_lr, warmup_steps", "log_every"});
  expect_parse_error("\nmodle:\n  hidden_size: 3\n",
                     {"r.yaml:2: unknown key 'modle'", "valid top-level keys: kind, name, out_dir, "
                                                       "init, model, data, train, checkpoint"});
  expect_parse_error("checkpoint:\n  evry: 3\n",
                     {"r.yaml:2:", "'checkpoint.evry'", "dir, every, keep"});
}

TEST(RecipeErrors, WrongTypes) {
  expect_parse_error("train:\n  steps: abc\n",
                     {"r.yaml:2: key 'train.steps' expects an integer, got 'abc'"});
  expect_parse_error("train:\n  steps: 1.5\n", {"r.yaml:2:", "'train.steps'", "an integer", "'1.5'"});
  expect_parse_error("train:\n  steps: \"10\"\n", {"r.yaml:2:", "'train.steps'", "quoted"});
  expect_parse_error("train:\n  steps:\n", {"r.yaml:2:", "'train.steps'", "null"});
  expect_parse_error("\n\ntrain:\n  lr: fast\n", {"r.yaml:4: key 'train.lr' expects a number"});
  expect_parse_error("train:\n  lr: .inf\n", {"r.yaml:2:", "'train.lr'", "number"});
  expect_parse_error("model:\n  tie_word_embeddings: yes\n",
                     {"r.yaml:2: key 'model.tie_word_embeddings' expects true or false, got 'yes'"});
  expect_parse_error("model:\n  tie_word_embeddings: 1\n", {"true or false"});
  expect_parse_error("train:\n  steps:\n    a: 1\n", {"r.yaml:2:", "'train.steps'", "a mapping"});
  expect_parse_error("name: [a, b]\n", {"r.yaml:1: key 'name' expects a string, got a sequence"});
  expect_parse_error("train: 5\n", {"r.yaml:1: key 'train' expects a mapping", "steps, lr"});
  expect_parse_error("- a\n- b\n", {"r.yaml:1:", "a recipe is a mapping", "kind, name"});
  expect_parse_error("train:\n  steps: 99999999999999999999\n", {"r.yaml:2:", "64-bit integer"});
}

TEST(RecipeErrors, MalformedYamlHasLineAndColumn) {
  std::string msg = error_of([] { parse_recipe("name: a\ntrain:\n  lr: [1, 2\n", "bad.yaml"); });
  EXPECT_EQ(msg.rfind("bad.yaml:", 0), 0u) << msg;
  EXPECT_NE(msg.find("invalid YAML"), std::string::npos) << msg;
  msg = error_of([] { parse_recipe("name: a\n  b: c\n", "bad.yaml"); });
  EXPECT_NE(msg.find("bad.yaml:2:"), std::string::npos) << msg;
  expect_parse_error("name: a\n---\nname: b\n", {"r.yaml:3:", "one YAML document"});
  // yaml-cpp's LoadAll never returned on this (an endless run of empty documents at one
  // position, allocating until memory ran out; found by tests/fuzz/fuzz_recipe.cpp).
  expect_parse_error(",", {"r.yaml:1:1: invalid YAML: ',' cannot start a value"});
  expect_parse_error("name: a\n,\n", {"r.yaml:", "invalid YAML"});
}

TEST(RecipeErrors, DuplicateKeys) {
  expect_parse_error("train:\n  lr: 0.1\n  lr: 0.2\n",
                     {"r.yaml:3: duplicate key 'train.lr' (first given at line 2)"});
  expect_parse_error("name: a\ntrain: {}\nname: b\n", {"r.yaml:3: duplicate key 'name'"});
}

TEST(RecipeErrors, RangesNameKeyAndRange) {
  expect_parse_error("train:\n  steps: 0\n", {"r.yaml:2: key 'train.steps' must be > 0, got 0"});
  expect_parse_error("train:\n  lr: -1\n", {"r.yaml:2: key 'train.lr' must be > 0"});
  expect_parse_error("train:\n  min_lr: 0.5\n  lr: 0.1\n",
                     {"r.yaml:2: key 'train.min_lr' must be in [0, train.lr = 0.1], got 0.5"});
  // min_lr left at its default but above a small lr: the error says it is the default.
  expect_parse_error("train:\n  lr: 1e-4\n", {"r.yaml: key 'train.min_lr'", "left at its default"});
  expect_parse_error("train:\n  beta2: 1\n", {"r.yaml:2: key 'train.beta2' must be in [0, 1)"});
  expect_parse_error("train:\n  eps: 0\n", {"'train.eps' must be > 0"});
  expect_parse_error("train:\n  grad_clip: -0.5\n", {"'train.grad_clip' must be >= 0"});
  expect_parse_error("train:\n  warmup_steps: -1\n", {"'train.warmup_steps' must be >= 0"});
  expect_parse_error("train:\n  weight_decay: -1\n", {"'train.weight_decay' must be >= 0"});
  expect_parse_error("train:\n  grad_accum: 0\n", {"'train.grad_accum' must be > 0"});
  expect_parse_error("train:\n  threads: -2\n", {"'train.threads' must be in [0, 1024]"});
  expect_parse_error("train:\n  threads: 100000\n", {"'train.threads' must be in [0, 1024]"});
  expect_parse_error("train:\n  eval_every: -1\n", {"'train.eval_every' must be >= 0"});
  expect_parse_error("train:\n  eval_batches: 0\n", {"'train.eval_batches' must be >= 1"});
  expect_parse_error("train:\n  log_every: 0\n", {"'train.log_every' must be >= 1"});
  expect_parse_error("train:\n  nonfinite: ignore\n",
                     {"r.yaml:2: key 'train.nonfinite' must be one of: stop, skip; got 'ignore'"});
  expect_parse_error("train:\n  max_consecutive_skips: 0\n", {"'train.max_consecutive_skips' must be > 0"});
  expect_parse_error("comm:\n  timeout_s: -1\n", {"r.yaml:2: key 'comm.timeout_s' must be >= 0"});
  expect_parse_error("checkpoint:\n  every: -1\n", {"r.yaml:2: key 'checkpoint.every' must be >= 0"});
  expect_parse_error("checkpoint:\n  keep: 0\n", {"'checkpoint.keep' must be >= 1"});
  expect_parse_error("data:\n  vocab_size: 100\n", {"r.yaml:2: key 'data.vocab_size' must be >= 256"});
  expect_parse_error("data:\n  seq_len: 0\n", {"'data.seq_len' must be > 0"});
  expect_parse_error("data:\n  batch_size: -8\n", {"'data.batch_size' must be > 0"});
  expect_parse_error("data:\n  val_fraction: 1.0\n", {"'data.val_fraction' must be in [0, 1)"});
  expect_parse_error("data:\n  corpus: wiki\n",
                     {"r.yaml:2: key 'data.corpus' must be one of: gcide, fortunes, dir; got 'wiki'"});
  expect_parse_error("data:\n  corpus: dir\n", {"'data.path'", "dir"});
  expect_parse_error("kind: prune\n", {"r.yaml:1: key 'kind' must be one of: pretrain, finetune, distill, kv_heads, kv_project, context_compressor; got 'prune'"});
  expect_parse_error("name: \"\"\n", {"r.yaml:1: key 'name' must not be empty"});
  expect_parse_error("model:\n  hidden_size: 0\n", {"r.yaml:2: key 'model.hidden_size' must be > 0"});
  expect_parse_error("model:\n  vocab_size: -1\n", {"'model.vocab_size' must be >= 0"});
  expect_parse_error("model:\n  head_dim: -1\n", {"'model.head_dim' must be >= 0"});
  expect_parse_error("model:\n  rms_norm_eps: 0\n", {"'model.rms_norm_eps' must be > 0"});
  expect_parse_error("model:\n  rope_theta: -1\n", {"'model.rope_theta' must be > 0"});
  expect_parse_error("model:\n  attention_dropout: 1\n", {"'model.attention_dropout' must be in [0, 1)"});
  expect_parse_error("model:\n  partial_rotary_factor: 0\n", {"'model.partial_rotary_factor' must be in (0, 1]"});
  // Zero means "derived" for these model sizes.
  RunConfig c = parse_recipe("model:\n  vocab_size: 0\n  num_key_value_heads: 0\n  head_dim: 0\n", "r");
  EXPECT_EQ(c.model.head_dim, 0);
}

TEST(RecipeOverrides, AppliedOnTopOfFile) {
  RunConfig c = parse_recipe("name: a\ntrain:\n  lr: 1e-2\n", "r.yaml",
                             {"train.lr=1e-3", "model.tie_word_embeddings=true", "name=foo",
                              "data.corpus = fortunes", "out_dir=", "train.steps=+7"});
  EXPECT_EQ(c.train.lr, 1e-3);
  EXPECT_TRUE(c.model.tie_word_embeddings);
  EXPECT_EQ(c.name, "foo");
  EXPECT_EQ(c.data.corpus, "fortunes");
  EXPECT_EQ(c.out_dir, "");
  EXPECT_EQ(c.train.steps, 7);
}

TEST(RecipeOverrides, Errors) {
  expect_parse_error("", {"override 'train.lrr=1': unknown key 'train.lrr'",
                          "valid keys in 'train': steps, lr"}, {"train.lrr=1"});
  expect_parse_error("", {"override 'foo.bar=1': unknown key 'foo'", "valid top-level keys"},
                     {"foo.bar=1"});
  expect_parse_error("", {"override 'train.steps=abc': key 'train.steps' expects an integer, got 'abc'"},
                     {"train.steps=abc"});
  expect_parse_error("", {"override 'train.lr'", "section.key=value"}, {"train.lr"});
  expect_parse_error("", {"override 'train=1'", "section", "train.<key>=value"}, {"train=1"});
  expect_parse_error("", {"override 'train.lr=0'", "'train.lr' must be > 0"}, {"train.lr=0"});
  expect_parse_error("", {"override 'name=[a'", "not valid YAML"}, {"name=[a"});
}

TEST(RecipeYaml, RoundTrip) {
  RunConfig c;
  c.name = "round trip: \"quoted\"\tand\\more";
  c.out_dir = "true";
  c.init = "";
  c.model.rms_norm_eps = 1e-5;
  c.model.rope_theta = 500000.0;
  c.model.initializer_range = 1.0 / 3.0;
  c.model.tie_word_embeddings = true;
  c.model.partial_rotary_factor = 0.75;
  c.data.corpus = "dir";
  c.data.path = "123";
  c.data.val_fraction = 0.1;
  c.train.lr = 3e-3;
  c.train.min_lr = 1e-5;
  c.train.eps = 1e-8;
  c.train.weight_decay = 0.1;
  c.train.seed = -42;
  c.checkpoint.dir = "null";
  std::string text = to_yaml(c);
  EXPECT_NE(text.find("lr: 0.003\n"), std::string::npos) << text;
  EXPECT_NE(text.find("weight_decay: 0.1\n"), std::string::npos) << text;
  EXPECT_NE(text.find("rms_norm_eps: 1.0e-05\n"), std::string::npos) << text;
  EXPECT_NE(text.find("rope_theta: 500000.0\n"), std::string::npos) << text;
  EXPECT_NE(text.find("partial_rotary_factor: 0.75\n"), std::string::npos) << text;
  RunConfig back = parse_recipe(text, "resolved.yaml");
  EXPECT_EQ(to_yaml(back), text);
  EXPECT_EQ(back.name, c.name);
  EXPECT_EQ(back.out_dir, "true");
  EXPECT_EQ(back.data.path, "123");
  EXPECT_EQ(back.checkpoint.dir, "null");
  EXPECT_EQ(back.model.initializer_range, 1.0 / 3.0);
  EXPECT_EQ(back.train.lr, 3e-3);
  EXPECT_EQ(back.train.min_lr, 1e-5);
  EXPECT_EQ(back.train.weight_decay, 0.1);
  EXPECT_EQ(back.train.seed, -42);
  // The defaults and the shipped recipe round-trip too.
  EXPECT_EQ(to_yaml(parse_recipe(to_yaml(RunConfig()), "d")), to_yaml(RunConfig()));
  RunConfig q = load_recipe((source_dir() / "recipes" / "quickstart.yaml").string());
  EXPECT_EQ(to_yaml(parse_recipe(to_yaml(q), "q")), to_yaml(q));
}

TEST(RecipeYaml, EveryFieldInStructOrder) {
  std::string text = to_yaml(RunConfig());
  std::vector<std::string> order = {"kind:", "name:", "out_dir:", "init:", "model:",
                                    "  vocab_size:", "  eos_token_id:", "data:", "  corpus:",
                                    "  batch_size:", "train:", "  steps:", "  log_every:",
                                    "checkpoint:", "  dir:", "  every:", "  keep:"};
  size_t pos = 0;
  for (const auto& key : order) {
    size_t found = text.find(key, pos);
    ASSERT_NE(found, std::string::npos) << key << " missing or out of order in:\n" << text;
    pos = found;
  }
}

TEST(RecipeYaml, HashStableAndSensitive) {
  RunConfig a;
  RunConfig b;
  EXPECT_EQ(recipe_hash(a), recipe_hash(b));
  EXPECT_EQ(recipe_hash(a).size(), 64u);
  b.train.lr = 3.0000000000000001e-3;  // the same double
  EXPECT_EQ(recipe_hash(a), recipe_hash(b));
  b.train.lr = 3.0000000000001e-3;
  EXPECT_NE(recipe_hash(a), recipe_hash(b));
  RunConfig c;
  c.model.tie_word_embeddings = true;
  EXPECT_NE(recipe_hash(a), recipe_hash(c));
}

TEST(RecipeMemory, ValuesDefaultsAndErrors) {
  RunConfig d = parse_recipe("", "m.yaml");
  EXPECT_EQ(d.memory.recompute, "none");
  EXPECT_EQ(d.memory.loss, "full");
  RunConfig c = parse_recipe(
      "memory:\n  recompute: every_k\n  recompute_every: 3\n  offload: disk\n"
      "  offload_dir: /tmp/spill\n  loss: chunked\n  loss_chunk: 256\n"
      "  wta_crs:\n    enabled: true\n    ratio: 0.25\n",
      "m.yaml", {"memory.meter=false"});
  EXPECT_EQ(c.memory.recompute, "every_k");
  EXPECT_EQ(c.memory.recompute_every, 3);
  EXPECT_EQ(c.memory.offload, "disk");
  EXPECT_EQ(c.memory.offload_dir, "/tmp/spill");
  EXPECT_EQ(c.memory.loss, "chunked");
  EXPECT_EQ(c.memory.loss_chunk, 256);
  EXPECT_TRUE(c.memory.wta_crs);
  EXPECT_EQ(c.memory.wta_crs_ratio, 0.25);
  EXPECT_FALSE(c.memory.meter);
  EXPECT_EQ(to_yaml(parse_recipe(to_yaml(c), "r")), to_yaml(c));
  expect_parse_error("memory:\n  recompute: some\n",
                     {"r.yaml:2", "memory.recompute", "none, full, every_k, selective, attention, budget"});
  expect_parse_error("memory:\n  offload: gpu\n", {"memory.offload", "none, host, disk"});
  expect_parse_error("memory:\n  activations: fp8\n", {"memory.activations", "fp32, bf16, int8"});
  expect_parse_error("memory:\n  recompute: budget\n", {"memory.budget_mb", "recompute is 'budget'"});
  expect_parse_error("memory:\n  offload: disk\n  activations: int8\n",
                     {"memory.activations", "cannot be combined"});
  expect_parse_error("memory:\n  wta_crs: {ratio: 1.5}\n", {"r.yaml:2", "memory.wta_crs.ratio", "(0, 1]"});
  expect_parse_error("", {"memory.wta_crs.ratio", "(0, 1]"}, {"memory.wta_crs.ratio=0"});
  expect_parse_error("memory:\n  wta_crs: true\n", {"memory.wta_crs", "expects a mapping", "enabled, ratio"});
  expect_parse_error("memory:\n  loss_chunk: 0\n", {"memory.loss_chunk", "> 0"});
  expect_parse_error("memory:\n  bogus: 1\n",
                     {"unknown key 'memory.bogus'", "recompute, recompute_every", "meter, wta_crs"});
}

TEST(RecipeCompression, NestedSectionValuesOverridesAndEmit) {
  RunConfig d = parse_recipe("", "c.yaml");
  EXPECT_EQ(d.comm.compression.codec, "none");
  EXPECT_EQ(d.comm.compression.error_control, "none");
  EXPECT_FALSE(d.comm.compression.enabled());
  RunConfig c = parse_recipe(
      "comm:\n  bucket_cap_mb: 5\n  compression:\n    codec: topk\n    ratio: 0.01\n"
      "    error_control: econtrol\n    eta: 0.2\n    warmup_steps: 100\n",
      "c.yaml", {"comm.compression.min_bucket_numel=4096", "comm.overlap=false"});
  EXPECT_EQ(c.comm.bucket_cap_mb, 5.0);
  EXPECT_FALSE(c.comm.overlap);
  EXPECT_EQ(c.comm.compression.codec, "topk");
  EXPECT_EQ(c.comm.compression.ratio, 0.01);
  EXPECT_EQ(c.comm.compression.error_control, "econtrol");
  EXPECT_EQ(c.comm.compression.eta, 0.2);
  EXPECT_EQ(c.comm.compression.warmup_steps, 100);
  EXPECT_EQ(c.comm.compression.min_bucket_numel, 4096);
  EXPECT_TRUE(c.comm.compression.enabled());
  std::string text = to_yaml(c);
  EXPECT_NE(text.find("comm:\n  backend: auto\n"), std::string::npos) << text;
  EXPECT_NE(text.find("\n  compression:\n    codec: topk\n"), std::string::npos) << text;
  EXPECT_EQ(to_yaml(parse_recipe(text, "r")), text);
  // Flow style works like block style.
  RunConfig f = parse_recipe("comm: {compression: {codec: powersgd, rank: 2}}\n", "f.yaml");
  EXPECT_EQ(f.comm.compression.codec, "powersgd");
  EXPECT_EQ(f.comm.compression.rank, 2);
}

TEST(RecipeCompression, Errors) {
  expect_parse_error("comm:\n  compression:\n    codec: zip\n",
                     {"r.yaml:3", "comm.compression.codec", "none, fp16, bf16, topk, randk, qsgd, sign, powersgd"});
  expect_parse_error("comm:\n  compression:\n    ratio: 0\n", {"comm.compression.ratio", "(0, 1]", "got 0"});
  expect_parse_error("comm:\n  compression:\n    ratio: 1.5\n", {"comm.compression.ratio", "(0, 1]"});
  expect_parse_error("", {"override 'comm.compression.ratio=2'", "(0, 1]"}, {"comm.compression.ratio=2"});
  expect_parse_error("comm:\n  compression:\n    error_control: ef22\n",
                     {"comm.compression.error_control", "none, ef, ef21, econtrol"});
  expect_parse_error("comm:\n  compression:\n    eta: 0\n", {"comm.compression.eta", "(0, 1]"});
  expect_parse_error("comm:\n  compression:\n    levels: 200\n", {"comm.compression.levels", "[1, 127]"});
  expect_parse_error("comm:\n  compression:\n    topk: 1\n",
                     {"unknown key 'comm.compression.topk'", "codec, ratio, k,"});
  expect_parse_error("comm:\n  compression: topk\n", {"r.yaml:2", "expects a mapping", "codec, ratio"});
  expect_parse_error("comm:\n  bogus: 1\n", {"unknown key 'comm.bogus'", "overlap, timeout_s, compression"});
  expect_parse_error("", {"unknown key 'comm.compression.zip'", "codec, ratio"}, {"comm.compression.zip=1"});
  expect_parse_error("", {"'comm.compression' is a section", "codec, ratio"}, {"comm.compression=topk"});
  expect_parse_error("", {"unknown key 'comm.bogus.x'", "valid keys in 'comm'"}, {"comm.bogus.x=1"});
}

}  // namespace
}  // namespace condense
