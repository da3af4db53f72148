#!/usr/bin/env python3
"""h82 (session 9): split a PTX file into functions keyed by demangled name (anonymous-namespace hash removed),
normalize each body, and compare two files."""
import re, subprocess, sys, hashlib

HASH = re.compile(r'_GLOBAL__N__[0-9a-fA-F]+_')

def demangle(names):
    out = subprocess.run(['c++filt'], input='\n'.join(names), capture_output=True, text=True).stdout.split('\n')
    return out[:len(names)]

def split(path):
    text = open(path).read()
    lines = text.split('\n')
    funcs = {}
    cur = None; body = []
    depth = 0
    for ln in lines:
        m = re.match(r'\s*(?:\.visible\s+|\.weak\s+)?\.(entry|func)\s+(?:\([^)]*\)\s*)?([\w$]+)', ln)
        if cur is None and m and not ln.rstrip().endswith(';'):
            cur = m.group(2); body = [ln]; depth = 0; seen = False
            depth += ln.count('{') - ln.count('}')
            if '{' in ln: seen = True
            continue
        if cur is not None:
            body.append(ln)
            depth += ln.count('{') - ln.count('}')
            if '{' in ln: seen = True
            if seen and depth == 0:
                funcs.setdefault(cur, []).append(body); cur = None
    return funcs

def norm(body, raw):
    out = []
    labels = {}; depots = {}
    for ln in body:
        ln = re.sub(r'//.*', '', ln).rstrip()
        s = ln.strip()
        if not s or s.startswith('.loc') or s.startswith('.file'):
            continue
        ln = HASH.sub('_GLOBAL__N__', ln)
        ln = ln.replace(raw, 'SELF')
        def lab(m):
            k = m.group(0)
            if k not in labels: labels[k] = '$L%d' % len(labels)
            return labels[k]
        ln = re.sub(r'\$L__[\w]+', lab, ln)
        def dep(m):
            k = m.group(0)
            if k not in depots: depots[k] = '__local_depot%d' % len(depots)
            return depots[k]
        ln = re.sub(r'__local_depot\d+', dep, ln)
        out.append(ln)
    return '\n'.join(out)

def load(path):
    funcs = split(path)
    raws = list(funcs)
    dem = demangle(raws)
    res = {}
    for raw, d in zip(raws, dem):
        key = HASH.sub('_GLOBAL__N__', d)
        for b in funcs[raw]:
            res.setdefault(key, []).append(norm(b, raw))
    return res

a = load(sys.argv[1]); b = load(sys.argv[2])
same = diff = 0
for k in sorted(a):
    if k not in b:
        print('ONLY IN A:', k); continue
    if a[k] == b[k]:
        same += 1
    else:
        diff += 1; print('DIFFERENT:', k)
for k in sorted(b):
    if k not in a: print('ONLY IN B:', k)
print('entries A %d, B %d; identical %d, different %d' % (len(a), len(b), same, diff))
for k in sorted(a):
    if 'kvquant_fold_kernel' in k and k in b:
        print('  ', 'same' if a[k]==b[k] else 'DIFF', k, hashlib.sha1(a[k][0].encode()).hexdigest()[:10])
