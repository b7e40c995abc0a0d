"""Plain-loop formulations of the compression zoo (issue #16), one sample at a time, written from
the methods' descriptions (and, for VisionZip, its code) as directly as possible. Slow on
purpose: ppllava/ops/compression.py and token_merging.py are tested against them.

Each returns a list of (sources, token): the inputs an output draws on (ascending) and the output,
in float64, outputs in the order of their first input.
"""


def cosine(p, q):
    return float(p @ q / (p.norm() * q.norm()))


def best(candidates):
    """The (index, score) of highest score, the first of equal ones."""
    top = None
    for index, score in candidates:
        if top is None or score > top[1]:
            top = (index, score)
    return top


def keep_top_by_loop(x, scores, budget):
    """x (L, D), scores (L,): the `budget` inputs of highest score, ties to the lower index."""
    ranked = sorted(range(len(scores)), key=lambda l: -float(scores[l]))  # Python's sort is stable
    return [([l], x[l].double()) for l in sorted(ranked[:budget])]


def tome_by_loop(x, keys, grid, budget):
    """ToMe's bipartite matching, neighbouring frames first, with merge_wavg's size-weighted average."""
    T, H, W = grid
    tokens = [dict(src=[l], size=1, x=x[l].double(), k=keys[l].double(), frame=l // (H * W))
              for l in range(len(x))]
    n_frames = T
    while len(tokens) > budget:
        edges = []  # (score, position of the A token, position of its best B token), A in token order
        for ia, a in enumerate(tokens):
            if n_frames > 1:
                if a["frame"] % 2 == 1 or a["frame"] + 1 == n_frames:
                    continue  # set B, or the waiting last frame group
                candidates = [(ib, cosine(a["k"], b["k"])) for ib, b in enumerate(tokens)
                              if b["frame"] == a["frame"] + 1]
            else:
                if ia % 2 == 1:
                    continue
                candidates = [(ib, cosine(a["k"], b["k"])) for ib, b in enumerate(tokens) if ib % 2 == 1]
            ib, score = best(candidates)
            edges.append((score, ia, ib))
        r = min(len(tokens) - budget, len(edges))
        chosen = sorted(edges, key=lambda e: -e[0])[:r]  # stable: equal scores keep the A order
        for _, ia, ib in chosen:
            a, b = tokens[ia], tokens[ib]
            size = a["size"] + b["size"]
            b["x"] = (a["size"] * a["x"] + b["size"] * b["x"]) / size
            b["k"] = (a["size"] * a["k"] + b["size"] * b["k"]) / size
            b["src"], b["size"] = sorted(a["src"] + b["src"]), size
        gone = {ia for _, ia, _ in chosen}
        tokens = sorted((t for i, t in enumerate(tokens) if i not in gone), key=lambda t: t["src"][0])
        if n_frames > 1:
            for t in tokens:
                t["frame"] //= 2
            n_frames = (n_frames + 1) // 2
    return [(t["src"], t["x"]) for t in tokens]


def visionzip_by_loop(x, cls_attention, keys, budget, contextual):
    """VisionZip's CLIPVisionTower_VisionZip.forward without [CLS]; contextual = (target + mean(joined)) / 2."""
    L = len(x)
    ranked = sorted(range(L), key=lambda l: -float(cls_attention[l]))
    dominant = ranked[: budget - contextual]
    outputs = [([l], x[l].double()) for l in dominant]
    if contextual:
        rest = sorted(ranked[budget - contextual :])
        step = max(1, len(rest) // contextual)
        target_positions = list(range(0, len(rest), step))[:contextual]
        targets = [rest[p] for p in target_positions]
        joined = {t: [] for t in targets}
        for p, l in enumerate(rest):
            if p not in target_positions:
                t, _ = best((t, cosine(keys[l].double(), keys[t].double())) for t in targets)
                joined[t].append(l)
        for t in targets:
            token = x[t].double()
            if joined[t]:
                token = (token + sum(x[j].double() for j in joined[t]) / len(joined[t])) / 2
            outputs.append((sorted([t] + joined[t]), token))
    return sorted(outputs, key=lambda o: o[0][0])
