"""The file side of the forget scan (tests/privacy/forget_scan.sh runs it).

    forget_scan.py DATA_DIR SERVER_LOG WORK_DIR

WORK_DIR holds plaintext.txt (the forgotten customer's strings), forgotten.hex (its stored bytes
before forgetting: ciphertexts, blind indexes, wrapped key; hex, one a line) and control.hex (the
same for a customer that stays). Fails (exit 1) when
  - a plaintext string is in any file of the data directory or in the server log;
  - a stored value of the forgotten customer is in a heap or index file (base/, global/);
  - a stored value of the control customer is not found in base/ (the search would be broken).
Reports, without failing, how many of the forgotten values WAL (pg_wal/) still holds.
"""
import os
import sys

data, server_log, work = sys.argv[1:4]


def lines(name):
    with open(os.path.join(work, name)) as f:
        return [l.strip() for l in f if l.strip()]


plaintext = [s.encode() for s in lines("plaintext.txt")]
forgotten = [bytes.fromhex(h) for h in lines("forgotten.hex")]
control = [bytes.fromhex(h) for h in lines("control.hex")]
# a blind index or ciphertext shorter than this could match by chance
assert all(len(b) >= 16 for b in forgotten + control), "a stored value shorter than 16 bytes"


def files(*tops):
    for top in tops:
        if os.path.isfile(top):
            yield top
        for root, _, names in os.walk(top):
            for n in names:
                yield os.path.join(root, n)


def area(path):
    rel = os.path.relpath(path, data)
    if rel.startswith("base" + os.sep) or rel.startswith("global" + os.sep):
        return "relations"
    if rel.startswith("pg_wal" + os.sep):
        return "wal"
    return "other"


failed = False
control_found = set()
in_wal = set()
scanned = 0
for path in files(data, server_log):
    try:
        with open(path, "rb") as f:
            content = f.read()
    except OSError:
        continue  # e.g. a socket or a file removed meanwhile
    scanned += 1
    kind = area(path)
    for s in plaintext:
        if s in content:
            print(f"plaintext {s.decode()!r} found in {path}", file=sys.stderr)
            failed = True
    for i, b in enumerate(forgotten):
        if b in content:
            if kind == "relations":
                print(f"stored value {i + 1} of the forgotten customer ({len(b)} bytes) "
                      f"still in {path}", file=sys.stderr)
                failed = True
            elif kind == "wal":
                in_wal.add(i)
    if kind == "relations":
        control_found.update(i for i, b in enumerate(control) if b in content)

missing = len(control) - len(control_found)
if missing:
    print(f"{missing} of the control customer's {len(control)} stored values not found in the "
          "relation files: the search is broken", file=sys.stderr)
    failed = True
print(f"forget scan: {scanned} files; {len(plaintext)} plaintext strings and "
      f"{len(forgotten)} stored values of the forgotten customer searched; control "
      f"{len(control_found)}/{len(control)} found; WAL still holds {len(in_wal)} of the "
      f"forgotten values (allowed: recycled after later checkpoints)")
sys.exit(1 if failed else 0)
