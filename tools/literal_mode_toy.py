"""Why eq. 15 inside the loss (pif.train_mode=literal) cancels itself: a 1-D closed-form toy.

Data: x0 ~ ½ N(−1, 0.1²) + ½ N(+1, 0.1²); G(x0) = ½ (x0 − 1)² prefers the +1 mode. The Bayes-optimal noise
predictor ε*(x_t, t) of the mixture is exact. A network trained with eq. 15 in its loss on a fraction f of rows
(∇G a constant in θ, x̂0 read from its own ε_θ) minimises E‖ε − (ε_θ + f·s·√(1−ᾱ)·∇G(x̂0(ε_θ)))‖², whose optimum
solves ε_θ + f·s·√(1−ᾱ)·∇G(x̂0(ε_θ)) = ε*; G is quadratic, so that is linear in ε_θ and solved exactly.
Training and sampling guidance act only where t ≤ T_MAX = 200 (the loss optimum exists while f·s·(1−ᾱ)/√ᾱ < 1,
which fails at high noise for s = 2). Sampling: DDIM (η = 0, 100 steps), guidance ε + s'·√(1−ᾱ)·∇G(x̂0).
Prints P(x0 > 0), the share of 20,000 samples in the preferred mode.

  python tools/literal_mode_toy.py
"""

import numpy as np

T, STEPS, T_MAX, SIGMA = 1000, 100, 200, 0.1
BETAS = np.linspace(1e-4, 2e-2, T)
ACP = np.cumprod(1.0 - BETAS)


def eps_star(x, acp):
  """Exact ε*(x_t) = −√(1−ᾱ) ∇ log p_t(x_t) for the two-Gaussian mixture."""
  a, b = np.sqrt(1 - acp), np.sqrt(acp)
  var = acp * SIGMA**2 + (1 - acp)
  logits = np.stack([-(x - b * m) ** 2 / (2 * var) for m in (-1.0, 1.0)])
  w = np.exp(logits - logits.max(0))
  w /= w.sum(0)
  score = sum(w[i] * -(x - b * m) / var for i, m in enumerate((-1.0, 1.0)))
  return -a * score


def trained_eps(x, acp, f, s):
  """Optimum of the eq.-15 loss: ε_θ = ε* − f s a (x̂0(ε_θ) − 1), x̂0 = (x − a ε_θ)/b, solved for ε_θ."""
  a, b = np.sqrt(1 - acp), np.sqrt(acp)
  return (eps_star(x, acp) - f * s * a * (x / b - 1.0)) / (1.0 - f * s * a * a / b)


def sample(eps_fn, guide_scale, n=20000, seed=0):
  x = np.random.default_rng(seed).normal(size=n)
  ts = np.arange(0, T, T // STEPS)[::-1]
  for i, t in enumerate(ts):
    acp, acp_prev = ACP[t], (ACP[ts[i + 1]] if i + 1 < len(ts) else 1.0)
    on = t <= T_MAX
    eps = eps_fn(x, acp, on)
    x0 = (x - np.sqrt(1 - acp) * eps) / np.sqrt(acp)
    if on and guide_scale:
      eps = eps + guide_scale * np.sqrt(1 - acp) * (x0 - 1.0)  # ∇G(x̂0) = x̂0 − 1
      x0 = (x - np.sqrt(1 - acp) * eps) / np.sqrt(acp)
    x = np.sqrt(acp_prev) * x0 + np.sqrt(1 - acp_prev) * eps
  return float(np.mean(x > 0))


def main():
  s, f = 2.0, 1.0
  plain = lambda x, acp, on: eps_star(x, acp)  # noqa: E731
  literal = lambda x, acp, on: trained_eps(x, acp, f, s) if on else eps_star(x, acp)  # noqa: E731
  rows = [('plain model, unguided', plain, 0.0), (f'plain model, guided s={s}', plain, s),
          (f'eq.-15-trained (f={f}, s={s}), unguided', literal, 0.0),
          (f'eq.-15-trained, guided at the training scale s={s}', literal, s),
          (f'eq.-15-trained, guided at 2s={2 * s}', literal, 2 * s)]
  print('| model | sampling | P(preferred mode) |\n|---|---|---|')
  for name, fn, g in rows:
    print(f'| {name} | DDIM {STEPS}, guidance for t <= {T_MAX} | {sample(fn, g):.3f} |')


if __name__ == '__main__':
  main()
