"""Reference token ids for tests/data/tokenizer/cases.json from the Python `tokenizers`
package (and `sentencepiece` for tokenizer.model), run on the GPU machine where they are
installed. Writes tests/data/tokenizer/expected-NAME.json; the C++ tokenizer tests compare
against these files.

  python3 scripts/oracle/tokenizer_vectors.py --cases tests/data/tokenizer/cases.json \
      --hf llama2-hf=PATH/tokenizer.json --hf smollm-135m=PATH/tokenizer.json \
      --spm llama2-spm=PATH/tokenizer.model --out tests/data/tokenizer
"""
import argparse, json, os

ap = argparse.ArgumentParser()
ap.add_argument("--cases", required=True)
ap.add_argument("--hf", action="append", default=[], help="NAME=tokenizer.json")
ap.add_argument("--spm", action="append", default=[], help="NAME=tokenizer.model")
ap.add_argument("--text", action="append", default=[], help="NAME=file: ids of a whole text")
ap.add_argument("--out", required=True)
args = ap.parse_args()
cases = json.load(open(args.cases, encoding="utf-8"))
os.makedirs(args.out, exist_ok=True)

def dump(name, res):
    with open(os.path.join(args.out, f"expected-{name}.json"), "w", encoding="utf-8") as f:
        json.dump(res, f, ensure_ascii=False, indent=0)

texts = {}
for spec in args.text:
    k, p = spec.split("=", 1)
    texts[k] = open(p, encoding="utf-8").read()

for spec in args.hf:
    import tokenizers
    name, path = spec.split("=", 1)
    tok = tokenizers.Tokenizer.from_file(path)
    tok.no_truncation(); tok.no_padding()
    res = {"source": f"tokenizers {tokenizers.__version__}", "cases": []}
    for s in cases:
        with_special = tok.encode(s).ids
        plain = tok.encode(s, add_special_tokens=False).ids
        res["cases"].append({"text": s, "ids": plain, "ids_with_special": with_special,
                             "decoded": tok.decode(plain, skip_special_tokens=False)})
    for k, t in texts.items():
        res.setdefault("texts", {})[k] = tok.encode(t, add_special_tokens=False).ids
    dump(name, res)
    print(name, len(res["cases"]))

for spec in args.spm:
    import sentencepiece as spm
    name, path = spec.split("=", 1)
    sp = spm.SentencePieceProcessor(model_file=path)
    res = {"source": f"sentencepiece {spm.__version__}", "cases": []}
    for s in cases:
        ids = sp.encode(s)
        res["cases"].append({"text": s, "ids": ids, "decoded": sp.decode(ids)})
    dump(name, res)
    print(name, len(res["cases"]))
