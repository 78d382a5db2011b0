"""Small study texts shared by test files (a plain module: pytest puts tests/ on sys.path)."""

# one dense/halting pair on synthetic data, without evaluation or energy settings
BASE = """
name: t
dataset: {name: synthetic}
model: {depth: 1, dim: 16, heads: 2, T: 2}
train: {epochs: 1, batch_size: 16, warmup_epochs: 0}
variants:
  dense: {}
  act: {tokens: {halting: {}}}
matrix: {seed: [0, 1]}
"""
