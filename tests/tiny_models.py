"""Tiny causal LMs built offline, for tests that must go through a real loading path.

Nothing is downloaded: a byte-level BPE tokenizer is trained on a small built-in corpus (the
`### Problem: ... ### Solution: ` prompt format, code and output fences, digits, math words) and
a random `LlamaForCausalLM` is made from a `LlamaConfig`. Both are saved with `save_pretrained`,
so a backend loads them exactly as it would load a real model directory.

`script=` makes the model deterministic: greedy decoding after any prompt that ends like the
prompt format (`... ### Solution: `) writes exactly `script` and then EOS. That lets tests check
stop strings, EOS and detokenization against known text.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Renders "### Problem: {content}\n### Solution: " for one user message (NuminaMath-TIR style).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '### Problem: ' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '### Solution: ' + message['content'] + '\\n' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '### Solution: ' }}{% endif %}"
)

# A script whose tokens are all distinct, so a first-order "next token" table can write it.
DEFAULT_SCRIPT = "We compute the value 42, so\n```output"

BOS, EOS, PAD = "<s>", "</s>", "<pad>"

_CORPUS_LINES = (
    "### Problem: What is 2 + 3?\n### Solution: We compute the sum.\n",
    "### Problem: Find the remainder when 2024 is divided by 7.\n### Solution: ",
    "### Problem: How many primes are less than 100?\n### Solution: Let us count them.\n",
    "```python\nprint(2 + 3)\n```\n```output\n5\n```\nThe answer is $\\boxed{5}$.\n",
    "```python\nfrom sympy import *\nx = symbols('x')\nprint(solve(x**2 - 4, x))\n```\n",
    "```output\n[-2, 2]\n```\nSo the roots are -2 and 2. The final answer is \\boxed{2}.\n",
    "We compute the value 42, so the answer is 42. Therefore the sum equals 10.\n",
    "Let n be an integer. The number of divisors of n is odd if n is a square.\n",
    "triangle circle square probability expected value modulo remainder prime factor\n",
    "sum product integer real positive negative equation function sequence polynomial\n",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 42 100 1000 2024 3.14 1/2 x^2 + y^2 = z^2\n",
    "def f(n):\n    return n * (n + 1) // 2\nprint(f(10))\n",
)


def default_corpus() -> str:
    """The built-in training text for the tokenizer."""
    return "".join(_CORPUS_LINES)


def build_tiny_tokenizer(path: str | os.PathLike, vocab_corpus: str | None = None):
    """Train a small byte-level BPE (bos/eos/pad, BOS prepended) and save it to `path`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    corpus = default_corpus() + (vocab_corpus or "")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=512,
        min_frequency=1,
        special_tokens=[PAD, BOS, EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([line for line in corpus.splitlines(keepends=True)] * 4, trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        padding_side="left",
        chat_template=CHAT_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_input_names=["input_ids", "attention_mask"],  # no token_type_ids (4.x adds them)
    )
    fast.save_pretrained(str(path))
    return fast


def build_tiny_llama(
    path: str | os.PathLike,
    *,
    vocab_corpus: str | None = None,
    num_layers: int = 2,
    hidden: int = 128,
    heads: int = 2,
    intermediate: int = 256,
    max_position: int = 1024,
    seed: int = 0,
    init_std: float = 0.02,
    script: str | None = None,
) -> Path:
    """Save a tiny random Llama (float32, safetensors) and its tokenizer to `path`.

    head_dim is hidden // heads (64 by default: vLLM's CPU attention rejects head_dim 16).
    With `script`, the weights are rewritten so greedy decoding after "### Solution: " writes
    `script` then EOS (see `_install_script`); the layers still run, they just barely matter.
    A larger `init_std` (e.g. 0.2) gives peaked, position-sensitive logits: greedy text then
    changes when positions, padding or the KV cache are handled wrongly.
    """
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    out = Path(path)
    out.mkdir(parents=True, exist_ok=True)
    tok = build_tiny_tokenizer(out, (vocab_corpus or "") + (script or ""))
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=hidden,
        intermediate_size=intermediate,
        num_hidden_layers=num_layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        head_dim=hidden // heads,
        max_position_embeddings=max_position,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=init_std,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config).to(torch.float32).eval()
    if script is not None:
        _install_script(model, tok, script)
    model.generation_config = GenerationConfig(
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    model.save_pretrained(str(out))
    (out / "tiny_model.json").write_text(json.dumps({"script": script, "seed": seed}))
    return out


def _install_script(model, tok, script: str) -> None:
    """Make greedy decoding a first-order chain: trigger -> script tokens -> EOS.

    Embeddings are scaled up so the residual stream is dominated by the current token's
    embedding; the lm_head row of each chain target is the (normalised) embedding of its
    predecessor, so the argmax after token t is succ(t) by a wide margin. Attention and MLP
    still run (on padding and cache too) but only nudge the logits.
    """
    import torch

    trigger = tok("### Problem: x\n### Solution: ", add_special_tokens=False)["input_ids"][-1]
    ids = tok(script, add_special_tokens=False)["input_ids"]
    chain = [trigger, *ids]
    if len(set(chain)) != len(chain):
        raise ValueError(f"script tokens must be distinct (and differ from the trigger): {ids}")
    if tok.decode(ids) != script:
        raise ValueError("script does not round-trip through the tokenizer")
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb.mul_(50.0)  # std 1.0: the embedding dominates the layers' small contributions
        head = model.get_output_embeddings().weight
        head.zero_()
        for cur, nxt in zip(chain, [*ids, tok.eos_token_id], strict=True):
            vec = emb[cur]
            head[nxt] += 10.0 * vec / vec.norm()
