"""Hugging Face transformers references for tests/gpu (run on the GPU machine).

Writes JSON with the fp32 greedy continuation (64 tokens) of the first 16 ids of the
testbed's logits_check prompt, plus fp32 logits of the full 64-id prompt (raw .f32 beside
it), for tests/gpu/model_parity_test.cpp (env KVQ_HF_REF).

  python3 scripts/gpu/hf_reference.py MODEL_DIR OUT.json
"""
import json, os, sys

import numpy as np
import torch
from transformers import LlamaForCausalLM


def main():
    model_dir, out = sys.argv[1], sys.argv[2]
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ref = json.load(open(os.path.join(model_dir, "reference.json")))
    ids = ref["logits_check"]["input_ids"]
    m = LlamaForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
    with torch.no_grad():
        x = torch.tensor([ids[:16]], device="cuda")
        g = m.generate(x, max_new_tokens=64, min_new_tokens=64, do_sample=False, num_beams=1,
                       eos_token_id=None, pad_token_id=0)
        greedy = g[0, 16:].tolist()
        lg = m(torch.tensor([ids], device="cuda")).logits.float()[0].cpu().numpy()
    logits_path = out + ".logits.f32"
    lg.astype("<f4").tofile(logits_path)
    json.dump({"greedy64_fp32": greedy, "prompt": ids[:16], "logits_f32": logits_path,
               "logits_shape": list(lg.shape), "transformers": __import__("transformers").__version__,
               "torch": torch.__version__}, open(out, "w"))
    print("hf_reference: greedy", greedy[:8], "... logits", lg.shape)


if __name__ == "__main__":
    main()
