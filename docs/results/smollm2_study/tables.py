"""The compact tables of docs/results.md (SmolLM2 study) from the report's CSV, with Welch intervals on simu minus each arm.

Usage: python docs/results/smollm2_study/tables.py docs/results/smollm2_study/report.csv
"""
import csv, sys, collections
rows = list(csv.DictReader(open(sys.argv[1])))
V = collections.defaultdict(dict)
for r in rows:
    V[(r['table'], r['group'], r['level'])][r['metric']] = r
def name(g):
    if 'activation' in g: return 'simu, activation-selected neurons'
    if 'random' in g: return 'simu, random neurons'
    if 'trainable=down_proj' in g: return 'simu, down_proj only'
    head = g.split()[0]
    return {'simu_adamw': 'simu_adamw (AdamW on the mask)', 'fo': 'fo (AdamW, every weight)',
            'so': 'so (Sophia, every weight)', 'simu': 'simu'}.get(head, g)
order = ['simu', 'so (Sophia, every weight)', 'fo (AdamW, every weight)', 'simu, random neurons',
         'simu, activation-selected neurons', 'simu_adamw (AdamW on the mask)', 'simu, down_proj only']
groups = sorted({r['group'] for r in rows}, key=lambda g: order.index(name(g)) if name(g) in order else 99)
def f(r, d=3):
    if r is None or r['mean'] in ('', 'nan'): return '–'
    m, lo, hi = float(r['mean']), float(r['ci_low']), float(r['ci_high'])
    if int(r['n']) < 2 or (lo != lo): return f"{m:.{d}f}"
    return f"{m:.{d}f} [{lo:.{d}f}, {hi:.{d}f}]"
levels = sorted({r['level'] for r in rows if r['table'] == 'matched'}, reverse=True)
print('| arm | seeds | steps taken | median win rate |\n|---|---|---|---|')
for g in groups:
    a = V[('after', g, '')]
    print(f"| {name(g)} | {a['stopped.step']['n']} | {f(a['stopped.step'], 1)} | {f(a.get('sophia.median_win_rate'))} |")
for lv in levels:
    print(f"\nAt {lv.replace('forget.rougeL_recall<=', 'forget ROUGE-L ')}:\n")
    print('| arm | reached | step | retain ROUGE-L | real authors "contains" | world facts "contains" | model utility |\n|---|---|---|---|---|---|---|')
    for g in groups:
        m = V[('matched', g, lv)]; any_ = next(iter(m.values()), None)
        reached = f"{any_['reached']}/{any_['n']}" if any_ else f"0/{V[('after', g, '')]['stopped.step']['n']}"
        print(f"| {name(g)} | {reached} | {f(m.get('step'), 1)} | {f(m.get('retain.rougeL_recall'))} | {f(m.get('real_authors.contains_answer'))} | {f(m.get('world_facts.contains_answer'))} | {f(m.get('model_utility'))} |")
print('\nForget ROUGE-L under each attack (sweep 3):\n')
atk = [('after', 'forget', 'unattacked'), ('rtn4_g128', 'forget', 'RTN 4-bit g128'), ('fp4', 'forget', 'bnb FP4'), ('nf4', 'forget', 'bnb NF4'),
       ('relearn_forget', 'forget_unattacked', 'relearn: held-out rows before'), ('relearn_forget', 'forget', 'relearn on forget: held-out rows after'),
       ('relearn_benign', 'forget', 'relearn on benign text'), ('paraphrase', 'forget', 'paraphrased questions'), ('prefixes', 'forget', 'answer prefixes')]
rg = [g for g in groups if any(k[0] == 'robustness' and k[1] == g for k in V)]
print('| attack | ' + ' | '.join(name(g) for g in rg) + ' |\n' + '|---' * (len(rg) + 1) + '|')
for a, split, label in atk:
    cells = [f(V[('robustness', g, a)].get(f'{split}.rougeL_recall')) for g in rg]
    print(f'| {label} | ' + ' | '.join(cells) + ' |')
cells = [f(V[('robustness', g, 'relearn_forget')].get('forget.exact_match')) for g in rg]
print('| relearn on forget: held-out rows exact match | ' + ' | '.join(cells) + ' |')
cells = [f(V[('robustness', g, 'mia')].get('forget_vs_holdout.loss_auc')) for g in rg]
print('| membership inference, loss AUC (forget vs held out) | ' + ' | '.join(cells) + ' |')

# Welch interval on the difference of two arms' means, from each arm's mean, t interval and n
from scipy import stats
def sd(r):
    n = int(r['n']); return (float(r['ci_high']) - float(r['mean'])) / stats.t.ppf(0.975, n - 1) * n ** 0.5
def diff(a, b):
    if a is None or b is None or a['mean'] in ('', 'nan') or b['mean'] in ('', 'nan'): return '–'
    na, nb = int(a['n']), int(b['n'])
    if na < 2 or nb < 2: return '–'
    va, vb = sd(a) ** 2 / na, sd(b) ** 2 / nb
    dof = (va + vb) ** 2 / (va ** 2 / (na - 1) + vb ** 2 / (nb - 1)) if va + vb > 0 else na + nb - 2
    d = float(a['mean']) - float(b['mean']); h = stats.t.ppf(0.975, dof) * (va + vb) ** 0.5
    return f"{d:+.3f} [{d - h:+.3f}, {d + h:+.3f}]"
simu = [g for g in groups if name(g) == 'simu'][0]
print('\nDifferences at matched forgetting, simu minus each arm (Welch 95% interval):\n')
print('| simu minus | metric | ' + ' | '.join(l.replace('forget.rougeL_recall<=', 'forget ROUGE-L ') for l in levels) + ' |\n' + '|---' * (len(levels) + 2) + '|')
for g in groups:
    if g == simu: continue
    for met, lab in [('retain.rougeL_recall', 'retain ROUGE-L'), ('model_utility', 'model utility')]:
        print(f"| {name(g)} | {lab} | " + ' | '.join(diff(V[('matched', simu, l)].get(met), V[('matched', g, l)].get(met)) for l in levels) + ' |')
