# bench/backup/dataset.py: the files bench/backup.sh backs up, written under DIR.
#
#   python3 bench/backup/dataset.py DIR MIB SEED
#
# About MIB MiB in three kinds of file, the way a web server's disk looks:
#   30% of the bytes in small files of 0-64 KiB (pages, scripts, thumbnails),
#       spread over nested dirs (site-N/year/month/...), hundreds per dir;
#   20% in medium files of 64 KiB-2 MiB (images, PDFs);
#   50% in large files of 16-128 MiB (release tarballs, database dumps, videos),
#       fewer when MIB is small (at least one).
# Every other file is text-like (letters, spaces and newlines drawn from a
# skewed table: about 2:1 with zstd, as HTML and logs are), the rest random
# bytes (incompressible, as JPEG and tarballs are). No two files share content,
# so restic's deduplication finds nothing to skip. The same arguments give the
# same files, byte for byte (Python's random.Random(SEED), 3.9 or later).
# Prints "FILES BYTES".
import os
import random
import sys

root, mib, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rnd = random.Random(seed)
total = mib << 20
KIB, MIB = 1 << 10, 1 << 20

# 256 bytes -> a text alphabet with English-like letter frequencies.
alphabet = (b"e" * 25 + b"t" * 18 + b"a" * 16 + b"o" * 15 + b"i" * 14 + b"n" * 14 + b"s" * 13 + b"h" * 12
            + b"r" * 12 + b"d" * 8 + b"l" * 8 + b"u" * 6 + b"c" * 6 + b"m" * 5 + b"w" * 4 + b"f" * 4
            + b"g" * 4 + b"y" * 4 + b"p" * 4 + b"b" * 3 + b"<>/=\"" + b"\n" * 6 + b" " * 48)
table = (alphabet * 2)[:256]
assert len(table) == 256

files = written = 0


def content(n):
    global files
    data = rnd.randbytes(n)
    return data.translate(table) if files % 2 == 0 else data


def write(path, n):
    global files, written
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        # in 16 MiB pieces: large files do not sit in memory whole
        left = n
        while left > 0:
            piece = min(left, 16 * MIB)
            f.write(content(piece))
            left -= piece
    files += 1
    written += n


# large first: their count depends on the total
budget = total // 2
i = 0
while budget > 0:
    n = min(budget, rnd.randint(16 * MIB, 128 * MIB)) if budget > 16 * MIB else budget
    write(os.path.join(root, "downloads", f"release-{i:03d}.tar"), n)
    budget -= n
    i += 1
budget = total * 2 // 10
i = 0
while budget > 0:
    n = min(budget, rnd.randint(64 * KIB, 2 * MIB))
    write(os.path.join(root, "media", f"{i % 16:02d}", f"image-{i:05d}.jpg"), n)
    budget -= n
    i += 1
budget = total - written
i = 0
while budget > 0:
    n = min(budget, rnd.randint(0, 64 * KIB))
    site = i % 8
    sub = f"site-{site}/2026/{(i // 8) % 12 + 1:02d}/{(i // 96) % 28 + 1:02d}"
    write(os.path.join(root, sub, f"page-{i:06d}.html"), n)
    budget -= n
    i += 1
print(files, written)
