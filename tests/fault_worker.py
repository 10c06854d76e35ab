"""``sacd-fast`` in a child process, for the fault-injection tests.

With SACD_TEST_SLOW_WRITE=SECONDS every checkpoint and generated-image write
pauses after its bytes are written and before the rename, printing
``WRITING <file name>``: the test can then kill the process while a
checkpoint (or a ``synth-data`` image) is half-way to disk.
"""

import os
import sys
import time

from sacd_fast import files
from sacd_fast.cli import main
from sacd_fast.data import synthdata
from sacd_fast import checkpoint

pause = os.environ.get("SACD_TEST_SLOW_WRITE")
if pause:
    atomic_write = files.atomic_write

    def slow_write(path, write):
        def then_pause(f):
            write(f)
            f.flush()
            print(f"WRITING {os.path.basename(path)}", flush=True)
            time.sleep(float(pause))

        atomic_write(path, then_pause)

    checkpoint.atomic_write = synthdata.atomic_write = slow_write

sys.exit(main(sys.argv[1:]))
