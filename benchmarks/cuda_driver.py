"""Every winnow op on a device, at small and awkward sizes, each result checked against the CPU
kernel of the same op (the well-tested path). `make gpu-check` (benchmarks/gpu_check.sh) runs it
plain and under compute-sanitizer; on the CPU it checks itself (CPU against CPU).

  --mode check     every op group (--only importance,adamw,rank,topk,act,softmax,oba: some)
  --mode syncs     host syncs per call, counted with torch.cuda.set_sync_debug_mode("warn"):
                   none in any op but masked_topk, which has exactly one (its output sizes)
  --mode big       64-bit indexing: ops on tensors of 2^31 + 4099 elements (about 30 GB at peak)
  --mode bad-block masked_adamw_step with an out-of-range block index (2^61 + 1: its element offset
                   wraps int64) in a child process: it must die of a device-side assert after
                   printing the CPU's message, and write nothing out of bounds (run under memcheck)
Exit 1 on any mismatch.
"""
import argparse
import math
import os
import subprocess
import sys
import warnings

import torch

import winnow
from winnow import ops, reference

F32, F64, BF16, F16 = torch.float32, torch.float64, torch.bfloat16, torch.float16
DTYPES = [F32, BF16, F16, F64]
TOL = {F64: (1e-11, 1e-12), F32: (1e-5, 1e-6), BF16: (1.6e-2, 1e-2), F16: (2e-3, 1e-3)}
CHUNK = 1 << 16  # the CUDA launchers' chunk of elements per block
FAILS: list[str] = []
DEV = torch.device("cpu")


def stat(dt):
    return F64 if dt == F64 else F32


def cpu(x):
    """A CPU copy (always a copy, also when DEV is cpu: the two runs must not alias)."""
    if isinstance(x, torch.Tensor):
        return x.detach().to("cpu", copy=True)
    if isinstance(x, (list, tuple)):
        return [cpu(t) for t in x]
    return x


def mk(shape, dtype, kind="randn", misaligned=False, scale=1.0):
    """A contiguous device tensor; misaligned: its data starts one element into an allocation."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    n = math.prod(shape) + int(misaligned)
    if kind == "mask":
        flat = torch.rand(n, device=DEV) < 0.3
    elif kind == "rand":
        flat = torch.rand(n, dtype=F64, device=DEV).to(dtype)
    else:
        flat = (scale * torch.randn(n, dtype=F64, device=DEV)).to(dtype)
    return flat[int(misaligned):].view(shape)


def check(name, got, want, rtol=0.0, atol=0.0):
    got, want = cpu(got), cpu(want)
    if isinstance(got, torch.Tensor):
        got, want = [got], [want]
    if len(got) != len(want):
        FAILS.append(f"{name}: {len(got)} outputs vs {len(want)}")
        return
    for i, (g, w) in enumerate(zip(got, want)):
        try:
            torch.testing.assert_close(g, w, rtol=rtol, atol=atol, equal_nan=True)
        except AssertionError as e:
            FAILS.append(f"{name}[{i}]: " + " ".join(str(e).split())[:400])
            return


# ---------------------------------------------------------------- importance_update / score
def importance_checks():
    sizes = [1, 5, CHUNK - 1, CHUNK, CHUNK + 1, 2 * CHUNK + 3] + [33] * 50  # 56 tensors: two launches
    for misaligned in (False, True):
        P, G, I, U = [], [], [], []
        for i, n in enumerate(sizes):
            dt = DTYPES[i % 4]
            P.append(mk(n, dt, misaligned=misaligned))
            G.append(mk(n, dt, misaligned=misaligned))
            I.append(mk(n, stat(dt), "rand", misaligned))
            U.append(mk(n, stat(dt), "rand", misaligned))
        G[0][0], G[3][7], G[5][-1], G[55][3] = float("inf"), float("nan"), float("nan"), float("inf")
        cnt = torch.zeros(len(sizes), dtype=torch.int64, device=DEV)
        cI, cU, ccnt = cpu(I), cpu(U), cpu(cnt)
        ops.importance_update_adalora(P, G, I, U, 0.85, 0.9, cnt)
        ops.importance_update_adalora(cpu(P), cpu(G), cI, cU, 0.85, 0.9, ccnt)
        check(f"adalora(misaligned={misaligned}) ipt", I, cI, 1e-6, 1e-12)
        check(f"adalora(misaligned={misaligned}) unc", U, cU, 1e-6, 1e-12)
        check(f"adalora(misaligned={misaligned}) nonfinite", cnt, ccnt)
    for exponent, beta, with_mask in [(1.0, 0.0, True), (0.0, 0.9, False), (0.5, 0.5, True), (-1.0, 0.0, True)]:
        for misaligned in (False, True):
            P, G, S, M = [], [], [], []
            for i, n in enumerate(sizes[:8] + [33] * 45):
                dt = DTYPES[i % 4]
                P.append(mk(n, dt, misaligned=misaligned))
                G.append(mk(n, dt, misaligned=misaligned))
                S.append(mk(n, stat(dt), "rand", misaligned))
                M.append(mk(n, torch.bool, "mask", misaligned))
            G[1][2], G[4][-1] = float("nan"), float("inf")
            cnt = torch.zeros(len(P), dtype=torch.int64, device=DEV)
            cS, ccnt = cpu(S), cpu(cnt)
            kw = dict(eps=1e-3, exponent=exponent, beta=beta)
            ops.importance_update_id3(P, G, S, M if with_mask else None, nonfinite=cnt, **kw)
            ops.importance_update_id3(cpu(P), cpu(G), cS, cpu(M) if with_mask else None, nonfinite=ccnt, **kw)
            tag = f"id3(exp={exponent}, beta={beta}, mask={with_mask}, misaligned={misaligned})"
            check(tag + " scores", S, cS, 1e-6, 1e-12)
            check(tag + " nonfinite", cnt, ccnt)
    cases = [((4, 6), 1), ((6, 4), 0), ((9,), None), ((0, 5), 0), ((5, 0), 1), ((3, 0), 0), ((300, 257), 0),
             ((257, 300), 1), ((CHUNK + 3,), None), ((5000, 3), 0), ((3, 5000), 1)] + \
        [((3, 7), i % 2) for i in range(70)]  # more means than one launch holds
    for misaligned in (False, True):
        I = [mk(s, F64 if i % 3 == 0 else F32, "rand", misaligned) for i, (s, _) in enumerate(cases)]
        U = [mk(s, t.dtype, "rand", misaligned) for (s, _), t in zip(cases, I)]
        dims = [d for _, d in cases]
        check(f"importance_score(misaligned={misaligned})", ops.importance_score(I, U, dims),
              ops.importance_score(cpu(I), cpu(U), dims), 1e-6, 1e-12)


# ---------------------------------------------------------------- masked_adamw_step
def adamw_case(numels, block_sizes, density, amsgrad, seed):
    gen = torch.Generator().manual_seed(seed)
    P, G, M, V, VM, B, S = [], [], [], [], [], [], []
    for i, (n, bs) in enumerate(zip(numels, block_sizes)):
        dt = DTYPES[i % 4]
        P.append(torch.randn(n, generator=gen, dtype=F64).to(dt))
        G.append(torch.randn(n, generator=gen, dtype=F64).to(dt))
        nb = (n + bs - 1) // bs
        chosen = (torch.rand(nb, generator=gen) < density).nonzero().view(-1)
        chosen = chosen[torch.randperm(chosen.numel(), generator=gen)]
        a = chosen.numel()
        B.append(chosen)
        S.append(torch.randint(0, 5, (a,), generator=gen, dtype=torch.int32))
        M.append((torch.randn(a * bs, generator=gen, dtype=F64) * 0.1).to(stat(dt)))
        V.append(torch.rand(a * bs, generator=gen, dtype=F64).to(stat(dt)) * 0.01)
        if amsgrad:
            VM.append(V[-1] * 1.5)
    return [P, G, M, V, VM, B, S]


def adamw_checks():
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8)
    shapes = [([1, 7, 4097, 2 * CHUNK + 5, 100, 1000], [64, 64, 1, 7, 100, 300]),
              ([2 * CHUNK + 7, 3], [CHUNK + 3, 1]),          # a block longer than a chunk
              ([300] * 40, [16] * 40)]                      # more tensors than one launch holds
    for si, (numels, bss) in enumerate(shapes):
        for amsgrad in (False, True):
            for maximize in (False, True):
                for amp in ("none", "scale", "inf"):
                    case = adamw_case(numels, bss, 0.6, amsgrad, seed=si)
                    dev = [[t.to(DEV) for t in lst] for lst in case]
                    before = cpu(dev)
                    extra_d, extra_c = {}, {}
                    if amp != "none":
                        extra_d = dict(grad_scale=torch.tensor([1024.0], device=DEV),
                                       found_inf=torch.tensor([1.0 if amp == "inf" else 0.0], device=DEV))
                        extra_c = {k: cpu(v) for k, v in extra_d.items()}
                    ops.masked_adamw_step(*dev, bss, amsgrad=amsgrad, maximize=maximize, **hp, **extra_d)
                    ops.masked_adamw_step(*case, bss, amsgrad=amsgrad, maximize=maximize, **hp, **extra_c)
                    tag = f"adamw(case={si}, amsgrad={amsgrad}, maximize={maximize}, amp={amp})"
                    for name, k in (("params", 0), ("exp_avg", 2), ("exp_avg_sq", 3), ("max_exp_avg_sq", 4)):
                        for j, (d, c) in enumerate(zip(dev[k], case[k])):
                            check(f"{tag} {name}[{j}]", d, c, *TOL[c.dtype])
                    check(tag + " block_steps", dev[6], case[6])
                    if amp == "inf":
                        check(tag + " nothing moved", dev[0], before[0])


def bad_block_child():
    """The child of --mode bad-block: a step that must end in a device-side assert."""
    p = torch.zeros(10, device=DEV)
    ops.masked_adamw_step([p], [torch.ones_like(p)], [torch.zeros(5, device=DEV)], [torch.zeros(5, device=DEV)], [],
                          [torch.tensor([2**61 + 1], device=DEV)], [torch.zeros(1, dtype=torch.int32, device=DEV)],
                          [5], lr=1e-3, beta1=0.9, beta2=0.999, weight_decay=0.0, eps=1e-8)
    if DEV.type == "cuda":
        torch.cuda.synchronize()
    print("bad-block child: the step returned; p =", p.tolist())


def bad_block_checks():
    env = dict(os.environ, WINNOW_DRIVER_CHILD="1")
    done = subprocess.run([sys.executable, __file__, "--mode", "bad-block", "--device", str(DEV)], env=env,
                          capture_output=True, text=True, timeout=300)
    out = done.stdout + done.stderr
    message = "active_blocks[0] holds block 2305843009213693953 but params[0] has 2 blocks of 5"
    print(out[-2000:])
    if done.returncode == 0 or message not in out:
        FAILS.append(f"bad block index: rc={done.returncode}, message printed: {message in out}")
    else:
        print("bad block index: refused with the CPU's message")


# ---------------------------------------------------------------- rank_prune
def rank_checks():
    gen = torch.Generator().manual_seed(1)
    mods = [(int(r), int(i), int(o)) for r, i, o in zip(
        torch.tensor([0, 1, 3, 8, 12])[torch.randint(0, 5, (45,), generator=gen)],
        torch.randint(0, 70, (45,), generator=gen), torch.randint(0, 70, (45,), generator=gen))]
    mods[7] = (4, 300, 4097)
    total = sum(r for r, _, _ in mods)
    for sd in (F32, F64):
        def rnd(*s):
            return torch.rand(*s, generator=gen, dtype=F64).to(sd)
        E = [torch.randn(r, 1, generator=gen).to(DTYPES[m % 4]) for m, (r, _, _) in enumerate(mods)]
        stats = [[rnd(r, 1) for r, _, _ in mods], [rnd(r, 1) for r, _, _ in mods],
                 [rnd(r, i) for r, i, _ in mods], [rnd(r, i) for r, i, _ in mods],
                 [rnd(o, r) for r, _, o in mods], [rnd(o, r) for r, _, o in mods]]
        dstats = [[t.to(DEV) for t in lst] for lst in stats]
        for k in (0, 1, total // 2, total):
            dE, cE = [e.to(DEV) for e in E], [e.clone() for e in E]
            s, keep = ops.rank_prune(dE, *dstats, k)
            cs, ckeep = ops.rank_prune(cE, *stats, k)
            tag = f"rank_prune(stats={sd}, k={k})"
            check(tag + " scores", s, cs, *TOL[sd])
            check(tag + " keep", keep, ckeep)
            check(tag + " lora_E", dE, cE)


# ---------------------------------------------------------------- masked_topk
def topk_checks():
    gen = torch.Generator().manual_seed(2)
    sizes = [1, 7, 4097, CHUNK + 3, 300, 3 * CHUNK] + [33] * 50
    for dt in (F32, F64):
        S = [(torch.randint(0, 30, (n,), generator=gen).to(F64) / 7).to(dt) for n in sizes]  # many ties
        M = [torch.rand(n, generator=gen) < 0.3 for n in sizes]
        cand = sum(int((~m).sum()) for m in M)
        for frac in (0.0, 1e-5, 0.001, 0.3, 1.0):
            k = int(cand * frac)
            for misaligned in (False, True):
                dS = [torch.cat([s[:1], s]).to(DEV)[1:] if misaligned else s.to(DEV) for s in S]
                got = ops.masked_topk(dS, [m.to(DEV) for m in M], k)
                check(f"masked_topk(dtype={dt}, k={k}, misaligned={misaligned})", got, ops.masked_topk(S, M, k))
        check(f"masked_topk(dtype={dt}, k > candidates)", ops.masked_topk([s.to(DEV) for s in S], [m.to(DEV) for m in M],
                                                                          cand + 5), ops.masked_topk(S, M, cand + 5))
    nan, inf = float("nan"), float("inf")
    for values, k in [([-1.0, -inf, 0.0, -0.0, 2.0, inf, nan], 6), ([nan, -inf], 1), ([-0.0, 0.0], 1),
                      ([0.0, -0.0], 1), ([nan] * 5 + [1.0], 3)]:
        for dt in (F32, F64):
            s = [torch.tensor(values, dtype=dt)]
            check(f"masked_topk special {values} k={k} {dt}", ops.masked_topk([s[0].to(DEV)], None, k),
                  reference.masked_topk(s, None, k))


# ---------------------------------------------------------------- act_tangent / softmax_tangent
def act_checks():
    special = torch.tensor([0.0, -0.0, 1e-30, -1e-30, 30.0, -30.0, 1e4, -1e4, float("inf"), float("-inf"),
                            float("nan"), 1.4142135, -1.2784645])
    for kind in ops.ACT_KINDS:
        for dt in DTYPES:
            for shape in [(1,), (7,), (4097,), (3, 5, 33), (CHUNK + 5,), "special", "strided"]:
                if shape == "special":
                    z = special.to(dt).to(DEV)
                elif shape == "strided":
                    z = mk((9, 6), dt, scale=3.0).t()
                else:
                    z = mk(shape, dt, scale=3.0)
                dz, gy, gdy = (mk(tuple(z.shape), dt) for _ in range(3))
                tag = f"act_tangent({kind}, {dt}, {shape})"
                check(tag, ops.act_tangent(z, dz, kind), ops.act_tangent(cpu(z), cpu(dz), kind), *TOL[dt])
                check(tag + " backward", ops.act_tangent_backward(z, dz, gy, gdy, kind),
                      ops.act_tangent_backward(cpu(z), cpu(dz), cpu(gy), cpu(gdy), kind), *TOL[dt])


def softmax_checks():
    for dt in DTYPES:
        for shape in [(1,), (7,), (3, 33), (5, 1), (2, 4097), (1000, 31), (4, 70000), (0, 3), (3, 0), "masked"]:
            if shape == "masked":
                s = torch.randn(6, 40, dtype=F64)
                s[:, 5] = float("-inf")
                p = torch.softmax(s, -1).to(dt).to(DEV)
            else:
                p = torch.softmax(3 * torch.randn(shape, dtype=F64), -1).to(dt).to(DEV)
            ds, g = mk(tuple(p.shape), dt), mk(tuple(p.shape), dt)
            tag = f"softmax_tangent({dt}, {shape})"
            check(tag, ops.softmax_tangent(p, ds), ops.softmax_tangent(cpu(p), cpu(ds)), *TOL[dt])
            check(tag + " backward", ops.softmax_tangent_backward(p, ds, g),
                  ops.softmax_tangent_backward(cpu(p), cpu(ds), cpu(g)), *TOL[dt])
    p = torch.softmax(torch.randn(9, 6, device=DEV), 0).t()
    ds = torch.randn(6, 9, device=DEV)
    check("softmax_tangent strided", ops.softmax_tangent(p, ds), ops.softmax_tangent(cpu(p), cpu(ds)), *TOL[F32])


# ---------------------------------------------------------------- OBA
def oba_checks():
    shapes = [(1,), (7,), (4097,), (5, 3, 3, 3), (CHUNK + 3,)] + [(33,)] * 50
    for dt in DTYPES:
        for misaligned in (False, True):
            T = [mk(s, dt, misaligned=misaligned) for s in shapes]
            H = [mk(s, dt, misaligned=misaligned) for s in shapes]
            S = [mk(s, F64, misaligned=misaligned) for s in shapes]
            cS = cpu(S)
            ops.oba_score_accumulate(T, H, S)
            ops.oba_score_accumulate(cpu(T), cpu(H), cS)
            check(f"oba_score_accumulate({dt}, misaligned={misaligned})", S, cS, 1e-13, 1e-13)
    for shape, groups in [((1, 1), 1), ((7, 3), 1), ((4097, 2), 1), ((6, 4, 3, 3), 3), ((8, 5, 7), 2),
                          ((4, 0, 2), 2), ((0, 3), 1), ((64, 3, 3, 3), 1), ((128, 1, 3, 3), 128),
                          ((3, 5000), 1), ((5000, 3), 1), ((512, 256, 3, 3), 1)]:
        s = mk(shape, F64)
        check(f"oba_channel_sums({shape}, {groups})", ops.oba_channel_sums(s, groups),
              ops.oba_channel_sums(cpu(s), groups), 1e-12, 1e-12)
    s = mk((50, 7), F64).t()
    check("oba_channel_sums strided", ops.oba_channel_sums(s, 1), ops.oba_channel_sums(cpu(s), 1), 1e-12, 1e-12)


# ---------------------------------------------------------------- host syncs
def sync_checks():
    """Calls every op twice (the first warms up) and counts the syncs of the second."""
    assert DEV.type == "cuda"
    n = 4097
    P, G = [mk(n, F32), mk(n, BF16)], [mk(n, F32), mk(n, BF16)]
    I, U = [mk(n, F32, "rand") for _ in P], [mk(n, F32, "rand") for _ in P]
    cnt = torch.zeros(2, dtype=torch.int64, device=DEV)
    case = [[t.to(DEV) for t in lst] for lst in adamw_case([4097, 300], [64, 7], 0.5, True, 0)]
    E = [mk((4, 1), F32), mk((3, 1), F32)]
    st = [[mk((4, 1), F32, "rand"), mk((3, 1), F32, "rand")], [mk((4, 1), F32, "rand"), mk((3, 1), F32, "rand")],
          [mk((4, 9), F32, "rand"), mk((3, 5), F32, "rand")], [mk((4, 9), F32, "rand"), mk((3, 5), F32, "rand")],
          [mk((6, 4), F32, "rand"), mk((2, 3), F32, "rand")], [mk((6, 4), F32, "rand"), mk((2, 3), F32, "rand")]]
    z = mk((64, 33), F32)
    one = torch.ones(1, device=DEV)
    calls = {
        "importance_update_adalora": lambda: ops.importance_update_adalora(P, G, I, U, 0.85, 0.85, cnt),
        "importance_update_id3": lambda: ops.importance_update_id3(P, G, I, None, nonfinite=cnt),
        "importance_score": lambda: ops.importance_score(I, U, [-1, None]),
        "masked_adamw_step": lambda: ops.masked_adamw_step(*case, [64, 7], lr=1e-3, beta1=0.9, beta2=0.999,
                                                           weight_decay=0.0, eps=1e-8, amsgrad=True,
                                                           grad_scale=one, found_inf=one * 0),
        "rank_prune": lambda: ops.rank_prune(E, *st, 2),
        "act_tangent": lambda: ops.act_tangent(z, z, "gelu"),
        "act_tangent_backward": lambda: ops.act_tangent_backward(z, z, z, z, "gelu"),
        "softmax_tangent": lambda: ops.softmax_tangent(z, z),
        "softmax_tangent_backward": lambda: ops.softmax_tangent_backward(z, z, z),
        "oba_score_accumulate": lambda: ops.oba_score_accumulate([z], [z], [torch.zeros_like(z, dtype=F64)]),
        "oba_channel_sums": lambda: ops.oba_channel_sums(z.double(), 1),
        "masked_topk": lambda: ops.masked_topk(I, None, 100),
    }
    for name, fn in calls.items():
        fn()
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("warn")
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn()
        finally:
            torch.cuda.set_sync_debug_mode(0)
        syncs = sum("synchroniz" in str(w.message) for w in caught)
        expected = 1 if name == "masked_topk" else 0
        print(f"host syncs in {name}: {syncs} (expected {expected})")
        if syncs != expected:
            FAILS.append(f"{name}: {syncs} host syncs, expected {expected}")


# ---------------------------------------------------------------- 64-bit indexing
def big_checks():
    assert DEV.type == "cuda"
    n, tail = (1 << 31) + 4099, 5003
    z = torch.randn(n, device=DEV, dtype=F16)
    dz = torch.randn_like(z)
    y, dy = ops.act_tangent(z, dz, "silu")
    check("big act_tangent", [y[-tail:], dy[-tail:]], ops.act_tangent(z[-tail:].clone(), dz[-tail:].clone(), "silu"))
    del z, dz, y, dy
    torch.cuda.empty_cache()
    p = torch.randn(n, device=DEV, dtype=BF16)
    g = torch.randn_like(p)
    ipt, unc = torch.rand(n, device=DEV), torch.rand(n, device=DEV)
    it, ut = ipt[-tail:].clone(), unc[-tail:].clone()
    cnt = torch.zeros(1, dtype=torch.int64, device=DEV)
    ops.importance_update_adalora([p], [g], [ipt], [unc], 0.85, 0.9, cnt)
    ops.importance_update_adalora([p[-tail:].clone()], [g[-tail:].clone()], [it], [ut], 0.85, 0.9, cnt * 0)
    check("big adalora", [ipt[-tail:], unc[-tail:]], [it, ut], 1e-6, 0.0)
    # masked_topk over 2^31 + 4099 scores: three winners placed past 2^31
    scores = ipt
    scores[-3:] = torch.tensor([100.0, 102.0, 101.0], device=DEV)
    got = ops.masked_topk([scores], None, 3)[0]
    check("big masked_topk", got, torch.arange(n - 3, n, device=DEV))
    del ipt, unc, scores
    torch.cuda.empty_cache()
    s = torch.zeros(n, device=DEV, dtype=F64)
    ops.oba_score_accumulate([p], [g], [s])
    want = p[-tail:].double() * g[-tail:].double()
    check("big oba_score_accumulate", s[-tail:], want, 1e-15, 0.0)
    del s
    torch.cuda.empty_cache()
    bs = 1 << 20
    nb = (n + bs - 1) // bs
    blocks = torch.arange(nb, device=DEV)
    steps = torch.zeros(nb, dtype=torch.int32, device=DEV)
    m, v = torch.zeros(nb * bs, device=DEV), torch.zeros(nb * bs, device=DEV)
    first = (nb - 2) * bs
    small = [[p[first:].clone()], [g[first:].clone()], [m[first:].clone()], [v[first:].clone()], [],
             [torch.arange(2, device=DEV)], [steps[-2:].clone()]]
    hp = dict(lr=1e-2, beta1=0.9, beta2=0.999, weight_decay=0.1, eps=1e-8)
    ops.masked_adamw_step([p], [g], [m], [v], [], [blocks], [steps], [bs], **hp)
    ops.masked_adamw_step(*small, [bs], **hp)
    check("big masked_adamw_step", [p[first:], m[first:], v[first:]], [small[0][0], small[2][0], small[3][0]],
          1e-6, 0.0)
    del p, g, m, v
    torch.cuda.empty_cache()
    rows = (n + 1023) // 1024
    sp = torch.softmax(torch.randn(rows, 1024, device=DEV, dtype=BF16), -1)
    sds = torch.randn_like(sp)
    out = ops.softmax_tangent(sp, sds)
    check("big softmax_tangent", out[-5:], ops.softmax_tangent(sp[-5:].clone(), sds[-5:].clone()))
    print(f"big: tensors of {n} elements (> 2^31) checked at their tail")


GROUPS = {"importance": importance_checks, "adamw": adamw_checks, "rank": rank_checks, "topk": topk_checks,
          "act": act_checks, "softmax": softmax_checks, "oba": oba_checks}


def main(argv=None) -> int:
    global DEV
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mode", default="check", choices=["check", "syncs", "big", "bad-block"])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--only", default=",".join(GROUPS), help="check mode: the op groups")
    args = ap.parse_args(argv)
    DEV = torch.device(args.device)
    torch.manual_seed(0)
    info = winnow.build_info()
    print("winnow", info, "device", DEV, torch.cuda.get_device_name() if DEV.type == "cuda" else "", flush=True)
    if DEV.type == "cuda" and not info["cuda_kernels"]:
        sys.exit("winnow was built without its CUDA kernels")
    if args.mode == "bad-block" and os.environ.get("WINNOW_DRIVER_CHILD"):
        bad_block_child()
        return 0
    if args.mode == "check":
        for name in args.only.split(","):
            GROUPS[name]()
            print(f"done {name}: {len(FAILS)} mismatches so far", flush=True)
    elif args.mode == "syncs":
        sync_checks()
    elif args.mode == "big":
        big_checks()
    else:
        bad_block_checks()
    if DEV.type == "cuda":
        torch.cuda.synchronize()
    for f in FAILS:
        print("MISMATCH", f)
    print(f"{args.mode}: {len(FAILS)} mismatches")
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
