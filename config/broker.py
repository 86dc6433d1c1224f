"""The embedded broker: kombu's filesystem transport, made safe for several processes.

kombu's own filesystem transport writes a message in place, in the folder consumers list, so
a consumer can pick up a file that is still being written and die on the half of a JSON
document it read (the worker's `Unrecoverable error: JSONDecodeError`); it moves a taken
message to the system's temporary folder with `shutil.move`, which is a copy (two consumers
can both take it) when that folder is on another filesystem; and it rewrites the exchange
tables of broadcast queues in place, which a reader can see empty.

Here every file appears whole or not at all: it is written under a name no reader looks at
and renamed into place (rename is atomic within a folder). A consumer takes a message by
renaming it into the broker's own `processing/` folder, so exactly one consumer gets it (one
that dies holding it gives it back: the next consumer to start queues it again). A
message that cannot be read or decoded anyway (a disk full at write time, a file an operator
dropped there) is moved to `bad/` and logged, and the consumer goes on with the next one.

`filesystem://` means this transport (config/celery.py registers it); its options are the
same as kombu's (`data_folder_in`, `data_folder_out`, `processed_folder`, `control_folder`).
"""

from __future__ import annotations

import fcntl
import logging
import os
import uuid
from pathlib import Path
from queue import Empty
from time import time_ns
from typing import Any

from kombu.exceptions import ChannelError
from kombu.transport import filesystem
from kombu.utils.json import dumps, loads

logger = logging.getLogger(__name__)

# Files being written start with this: no reader takes a name without a queue suffix.
_PARTIAL_PREFIX = ".partial-"
# A message taken this long ago and still in processing/ lost its consumer (see
# Channel._recover_orphans).
ORPHAN_AFTER_S = 60


def write_atomically(folder: str | Path, name: str, data: bytes) -> Path:
    """Write `data` to folder/name so that a reader sees all of it or no file at all."""
    final = Path(folder) / name
    partial = Path(folder) / f"{_PARTIAL_PREFIX}{uuid.uuid4().hex}"
    try:
        with open(partial, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(partial, final)
    except OSError:
        partial.unlink(missing_ok=True)
        raise
    return final


class Channel(filesystem.Channel):
    # The two base classes' stubs disagree on this signature; kombu calls it as _put(queue, m).
    def _put(self, queue: str, message: Any, **kwargs: Any) -> None:  # type: ignore[override]
        # Wall-clock nanoseconds keep the names in order across processes, with a width
        # that does not change for centuries (the names are sorted as strings).
        name = f"{time_ns():020d}_{uuid.uuid4()}.{queue}.msg"
        try:
            write_atomically(self.data_folder_out, name, dumps(message).encode())
        except OSError as exc:
            raise ChannelError(f"Cannot add {name!r} to {self.data_folder_out}") from exc

    def _get(self, queue: str, timeout: float | None = None) -> Any:
        if not getattr(self, "_recovered", False):
            self._recovered = True
            self._recover_orphans()
        suffix = f"{queue}.msg"
        for name in sorted(os.listdir(self.data_folder_in)):
            if name.partition(".")[2] != suffix:
                continue
            taken = self._take(name)
            if taken is None:
                continue  # another consumer took it first
            try:
                payload = loads(taken.read_bytes())
            except (OSError, ValueError) as exc:
                self._quarantine(taken, exc)
                continue
            self._done(taken)
            return payload
        raise Empty()

    def _take(self, name: str) -> Path | None:
        """Rename the message out of the queue: one consumer wins, the others see it gone."""
        processing = self.processing_folder
        processing.mkdir(parents=True, exist_ok=True)
        taken = processing / f"{uuid.uuid4().hex}-{name}"
        try:
            os.rename(os.path.join(self.data_folder_in, name), taken)
        except FileNotFoundError:
            return None
        return taken

    def _recover_orphans(self) -> None:
        """Messages a consumer took and died before reading (between two system calls) go
        back to the queue. A live consumer holds a taken file for microseconds; the rename
        that took it set its ctime, so one taken ORPHAN_AFTER_S ago is nobody's."""
        processing = self.processing_folder
        if not processing.is_dir():
            return
        cutoff = time_ns() - ORPHAN_AFTER_S * 1_000_000_000
        for taken in processing.iterdir():
            try:
                if taken.stat().st_ctime_ns >= cutoff:
                    continue
                original = taken.name.split("-", 1)[1]
                os.rename(taken, Path(self.data_folder_in) / original)
            except (OSError, IndexError):
                continue  # taken back by another consumer meanwhile, or not ours
            logger.warning("broker: a message taken by a consumer that died is queued again")

    def _done(self, taken: Path) -> None:
        if self.store_processed:
            os.rename(taken, Path(self.processed_folder) / taken.name)
        else:
            taken.unlink(missing_ok=True)

    def _quarantine(self, taken: Path, error: Exception) -> None:
        bad = self.broker_folder / "bad"
        bad.mkdir(parents=True, exist_ok=True)
        os.rename(taken, bad / taken.name)
        logger.error("broker: an unreadable message was moved to %s: %s", bad / taken.name, error)

    @property
    def broker_folder(self) -> Path:
        """The broker's own folder: the parent of the queue folder (var/celery)."""
        return Path(self.data_folder_in).resolve().parent

    @property
    def processing_folder(self) -> Path:
        return self.broker_folder / "processing"

    # --- exchange tables (broadcast queues: the workers' remote control) -------------

    def _table_file(self, exchange: str) -> Path:
        # kombu's check of the name (no path out of the control folder); not in its stubs.
        file: Path = self._exchange_file(exchange)  # type: ignore[attr-defined]
        return file

    def get_table(self, exchange: str) -> list[Any]:
        file = self._table_file(exchange)
        try:
            table = loads(file.read_bytes())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise ChannelError(f"Cannot read {file}") from exc
        return [filesystem.exchange_queue_t(*q) for q in table]

    def _queue_bind(
        self, exchange: str, routing_key: str | None, pattern: str | None, queue: str | None
    ) -> None:
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda queues: [binding, *(q for q in queues if q != binding)])

    def _delete(self, queue: str, exchange: str, routing_key: str, pattern: str, *args: Any,
                **kwargs: Any) -> None:  # fmt: skip
        # virtual.Channel's: forget the queue's binding in this process's state.
        super(filesystem.Channel, self)._delete(queue, exchange, routing_key, pattern, *args,
                                                **kwargs)  # fmt: skip
        binding = filesystem.exchange_queue_t(routing_key or "", pattern or "", queue or "")
        self._update_table(exchange, lambda queues: [q for q in queues if q != binding])

    def _update_table(self, exchange: str, change: Any) -> None:
        """Read, change and replace an exchange table under one lock for all writers;
        readers never lock, and always read a whole table."""
        file = self._table_file(exchange)
        self.control_folder.mkdir(parents=True, exist_ok=True)
        try:
            with open(self.control_folder / ".tables.lock", "a") as lock:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
                queues = self.get_table(exchange)
                updated = change(queues)
                if updated != queues:
                    write_atomically(self.control_folder, file.name, dumps(updated).encode())
        except OSError as exc:
            raise ChannelError(f"Cannot update {file}") from exc


class Transport(filesystem.Transport):
    Channel = Channel
    driver_type = "filesystem"
    driver_name = "filesystem"
