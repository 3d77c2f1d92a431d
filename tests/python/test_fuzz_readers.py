"""Runs the libFuzzer targets of every reader of user files (tests/fuzz): the safetensors and GGUF
readers, the byte-level BPE tokenizer (serialized and tokenizer.json), the strict recipe parser
and the HDF5 token store and checkpoint readers, for a bounded time each (CONDENSE_FUZZ_SECONDS,
default 30), seeded with valid files written by the reference writers (the safetensors package,
the gguf package, the tokenizers package), the repository's recipes, and a token store and
checkpoint condense writes here.
Any crash, sanitizer report or non-condense exception fails the test."""
import os
import pathlib
import re
import shutil
import subprocess

import numpy as np

SOURCE = pathlib.Path(os.environ.get("CONDENSE_SOURCE_DIR", pathlib.Path(__file__).resolve().parents[2]))
BUILD = pathlib.Path(os.environ.get("CONDENSE_BUILD_DIR", SOURCE / "build"))


def test_fuzz_readers(tmp_path):
    # Missing tools fail rather than skip: scripts/install.sh installs both.
    assert shutil.which("clang++-14"), "clang++-14 not installed (scripts/install.sh installs it)"
    seeds = tmp_path / "seeds"
    (seeds / "safetensors").mkdir(parents=True)
    (seeds / "gguf").mkdir(parents=True)
    from safetensors.numpy import save_file
    save_file({"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.ones(4, np.float16)},
              str(seeds / "safetensors" / "seed1"), metadata={"format": "pt"})
    save_file({"x": np.zeros((0, 3), np.int64)}, str(seeds / "safetensors" / "seed2"))
    import gguf
    w = gguf.GGUFWriter(str(seeds / "gguf" / "seed1"), "llama")
    w.add_block_count(2)
    w.add_token_list(["<unk>", "<s>", "a"])
    w.add_tensor("t", np.arange(64, dtype=np.float32).reshape(2, 32))
    w.add_tensor("h", np.ones((1, 32), dtype=np.float16))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    # The byte-level BPE tokenizer: a tokenizer.json trained by the `tokenizers` package, and
    # condense's serialized form of it (what checkpoints and token stores carry).
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    (seeds / "tokenizer_json").mkdir()
    (seeds / "bpe_vocab").mkdir()
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(["Hello, world! The quick brown fox jumps over the lazy dog. 12345"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.save(str(seeds / "tokenizer_json" / "seed1"))
    (tmp_path / "empty").write_bytes(b"")
    subprocess.run([str(BUILD / "tests" / "bpe_tokenize"), "--json", str(seeds / "tokenizer_json" / "seed1"),
                    "--save-serialized", str(seeds / "bpe_vocab" / "seed1"), str(tmp_path / "empty"),
                    str(tmp_path / "empty.out")], check=True, capture_output=True)
    # The recipe parser: every recipe in recipes/. The HDF5 readers' edit scripts start from a
    # small token store and a checkpoint of a one-layer model trained one step on it.
    (seeds / "recipe").mkdir()
    for y in sorted((SOURCE / "recipes").glob("*.yaml")):
        shutil.copy(y, seeds / "recipe" / y.name)
    (seeds / "hdf5_base").mkdir()
    condense = os.environ.get("CONDENSE_BIN", str(BUILD / "condense"))
    store = seeds / "hdf5_base" / "store.h5"
    subprocess.run([condense, "prepare", "--corpus", "fortunes", "--max-documents", "100",
                    "--vocab-size", "400", "--val-fraction", "0.1", "--out", str(store)],
                   check=True, capture_output=True)
    run_dir = tmp_path / "tiny"
    subprocess.run([condense, "train", str(SOURCE / "recipes" / "quickstart.yaml"), "name=tiny",
                    f"out_dir={run_dir}", f"data.dataset={store}", "data.seq_len=16",
                    "data.batch_size=2", "model.hidden_size=16", "model.intermediate_size=32",
                    "model.num_hidden_layers=1", "model.num_attention_heads=2",
                    "model.num_key_value_heads=1", "model.max_position_embeddings=16",
                    "train.steps=1", "train.eval_every=0", "train.threads=1"],
                   check=True, capture_output=True)
    ckpt = run_dir / "checkpoints" / "step_000001.h5"
    shutil.copy(ckpt, seeds / "hdf5_base" / "checkpoint.h5")
    secs = os.environ.get("CONDENSE_FUZZ_SECONDS", "30")
    p = subprocess.run(["bash", str(SOURCE / "tests" / "fuzz" / "run_fuzz.sh"), secs,
                        str(tmp_path / "out"), str(seeds)], capture_output=True, text=True,
                       timeout=900)
    print(p.stdout[-3000:], p.stderr[-3000:])
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "[fuzz] ok" in p.stdout
    for name in ("safetensors", "gguf", "bpe_vocab", "tokenizer_json", "recipe", "hdf5_readers"):
        assert re.search(rf"^\[fuzz\] {name}: [0-9]+ inputs, no crash$", p.stdout, re.M), (name, p.stdout)
