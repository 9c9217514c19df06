"""The resource experiment's table (results/resources-banking77/README.md) from its kept cells.

    python scripts/resource_table.py results/resources-banking77/cells

Reads every ARM/PARTITION/STRATEGY/seedS/{summary.json,metrics.jsonl} under the folder
(arms: limits, both, counts) and prints, per partition and arm, the final test accuracy
and the test accuracy at the best validation round (mean and sample sd over seeds), the
measured training memory of every client-round (`train_memory_bytes`) per group as its
median relative to the strong group's median and its maximum, the weak group's CPU time
per training sample relative to the strong group's, and the number of client-rounds
whose measured memory exceeded their declared limit; then the accuracy differences
paired by seed against the depth baseline under limits (and, for the "both" arm, against
depth in that arm)."""
import json, glob, os, statistics as st, sys
root = sys.argv[1]
cells = {}
for summ in sorted(glob.glob(f'{root}/*/*/*/seed*/summary.json')):
    d = os.path.dirname(summ)
    arm, p, s, seed = d.split('/')[-4:]
    S = json.load(open(summ))
    recs = [json.loads(l) for l in open(os.path.join(d, 'metrics.jsonl'))]
    mem = {}; cpu = {}; over = 0; lim = {}
    for r in recs:
        for c in r.get('clients', []):
            g = c['group']
            mem.setdefault(g, []).append(c['train_memory_bytes'])
            cpu.setdefault(g, []).append(c['train_cpu_time_s'] / c['num_samples'])
            if c.get('memory_limit_bytes'):
                lim[g] = c['memory_limit_bytes']
                over += c['train_memory_bytes'] > c['memory_limit_bytes']
    cells.setdefault((p, arm, s), []).append(dict(seed=seed, final=100 * S['final_test_accuracy'],
        best=100 * S['test_accuracy_at_best_val'], mem=mem, cpu=cpu, over=over, lim=lim,
        cell_s=sum((S.get('phase_time_s') or {}).values())))
def ms(v):
    return f"{st.mean(v):.2f} ± {st.stdev(v):.2f}" if len(v) > 1 else f"{v[0]:.2f}"
order = ['depth', 'fedhello', 'fim-hla', 'rgd-hla', 'fedra', 'exclusive', 'fedit']
for p in ['pat-10', 'iid']:
    keys = sorted([k for k in cells if k[0] == p], key=lambda k: (['limits', 'both', 'counts'].index(k[1]), order.index(k[2])))
    if not keys: continue
    print(f"\n### {p}\n")
    print("| mode | strategy | seeds | final test % | test % at best val | weak group memory: median (x strong), max | middle group memory: median (x strong), max | weak CPU s/sample (x strong) | memory overshoots |")
    print("|---|---|---|---|---|---|---|---|---|")
    for k in keys:
        cs = cells[k]
        def grp(g):
            m = [x for c in cs for x in c['mem'].get(g, [])]; f = [x for c in cs for x in c['mem'].get(2, [])]
            return f"{st.median(m)/1e6:.1f} MB ({st.median(m)/st.median(f):.2f}x), {max(m)/1e6:.1f} MB" if m else "-"
        c0 = [x for c in cs for x in c['cpu'].get(0, [])]; c2 = [x for c in cs for x in c['cpu'].get(2, [])]
        cpu = f"{st.median(c0)/st.median(c2):.2f}x" if c0 else "-"
        lim = cs[0]['lim']
        ov = f"{sum(c['over'] for c in cs)}" + (f" (limits {', '.join(f'{v/1e6:.0f} MB' for _, v in sorted(lim.items()))})" if lim else " (no limits)")
        strat = k[2] + (" (= fedhello, fim-hla, rgd-hla, fedra)" if k[1] == 'limits' else "")
        print(f"| {k[1]} | {strat} | {','.join(c['seed'][4:] for c in cs)} | {ms([c['final'] for c in cs])} | {ms([c['best'] for c in cs])} | {grp(0)} | {grp(1)} | {cpu} | {ov} |")
print()
# paired differences vs depth under limits, per seed
for p in ['pat-10', 'iid']:
    base = {c['seed']: c['final'] for c in cells.get((p, 'limits', 'depth'), [])}
    if not base: continue
    out = []
    for k in sorted(k for k in cells if k[0] == p and k[1] == 'counts'):
        d = [c['final'] - base[c['seed']] for c in cells[k] if c['seed'] in base]
        if d: out.append(f"{k[2]} {st.mean(d):+.2f} ({', '.join(f'{x:+.2f}' for x in d)})")
    print(f"{p}, final accuracy under counts minus depth under limits, paired by seed: " + "; ".join(out))
    bb = {c['seed']: c['final'] for c in cells.get((p, 'both', 'depth'), [])}
    out = []
    for k in sorted(k for k in cells if k[0] == p and k[1] == 'both' and k[2] != 'depth'):
        d = [c['final'] - bb[c['seed']] for c in cells[k] if c['seed'] in bb]
        if d: out.append(f"{k[2]} {st.mean(d):+.2f} ({', '.join(f'{x:+.2f}' for x in d)})")
    if out: print(f"\n{p}, both (budgets 2/3/6 under the limits): final accuracy minus depth's, paired by seed: " + "; ".join(out))
