"""noisy: writes a line with control characters to stderr and exits 1 (master's stderr relay)."""

import sys

sys.stderr.write("noisy: \x1b[31mred\x07 and\rmore\n")
sys.exit(1)
