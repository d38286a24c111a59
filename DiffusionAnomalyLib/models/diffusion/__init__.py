"""Noise schedule and samplers, written to the source works' equations (kidney thesis §2.2, §4.1.2; liver paper §II).

Timestep convention: t = 0 is the clean latent (alpha_bar_0 = 1); t = 1..T are the noised
states with alpha_bar_t = prod_{s=1..t} (1 - beta_s). Networks are trained on t in 1..T.
"""
