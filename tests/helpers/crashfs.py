"""A file system that loses what was not synced, for power-cut tests.

``kill -9`` keeps the page cache: a write that was never fsynced is still
there when the process comes back, so a test that kills processes cannot
tell whether the code syncs. This FUSE file system (a passthrough over a
directory, in the spirit of lazyfs and CrashMonkey) keeps, beside the live
files, what a disk would hold after a power cut:

- a file's content becomes durable only when it is fsynced or fdatasynced
  (through any descriptor);
- a directory's entries (files created, renamed, removed; directories made)
  become durable only when that directory is fsynced. A file whose entry
  is durable but whose data never was comes back empty.

``cut()`` is the power cut: from then on every operation fails with EIO,
so nothing more becomes durable (the processes using it are killed right
after, as a power cut would). ``restore()`` rebuilds the directory from
what was durable and mounts it again. ``checkpoint()`` makes everything
durable (``sync``), for the part of a test that is not under scrutiny.

What it does not model: a disk may also keep part of what was not synced,
in any order (the journal's unit tests cover the torn tails that leaves);
here unsynced data is lost whole, the harsher case for acknowledged writes.

Run as a process of its own (``python -m tests.helpers.crashfs``); the test
drives it through a unix socket. Needs /dev/fuse and libfuse 3 (Debian's
fuse3) and the ``mfusepy`` package.
"""

from __future__ import annotations

import argparse
import errno
import os
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time



def _backing_flags(flags: int) -> int:
    """Open the backing file for reading too (a sync copies from it), and
    without O_APPEND: the kernel already turns an append into a write at
    the end of the file, whose offset it passes."""
    return (flags & ~(os.O_ACCMODE | os.O_APPEND)) | os.O_RDWR


class CrashOps:
    """The operations (mfusepy's interface) and the durable image."""

    use_ns = True

    def __init__(self, backing: str, store: str):
        self.root = os.path.realpath(backing)
        self.store = store              # durable contents: one file per file id
        os.makedirs(store, exist_ok=True)
        self._mutex = threading.RLock()
        self.power = True
        self.ids: dict[int, int] = {}   # backing inode -> file id (never reused)
        self.next_id = 1
        self.fh_ids: dict[int, int] = {}
        self.dirty: dict[int, list[tuple[int, int]]] = {}
        self.shrunk: dict[int, int] = {}
        self.dirs: dict[int, dict[str, tuple]] = {}     # dir id -> durable entries
        self.syncs = 0
        self.checkpoint()

    # -- identities and the durable image ---------------------------------------------
    def _fresh(self, ino: int) -> int:
        self.ids[ino] = self.next_id
        self.next_id += 1
        return self.ids[ino]

    def _id(self, ino: int) -> int:
        return self.ids.get(ino) or self._fresh(ino)

    def _full(self, path: str) -> str:
        return os.path.join(self.root, path.lstrip("/"))

    def _entry(self, full: str) -> tuple:
        st = os.lstat(full)
        mode = stat.S_IMODE(st.st_mode)
        if stat.S_ISDIR(st.st_mode):
            return ("d", self._id(st.st_ino), mode)
        if stat.S_ISREG(st.st_mode):
            return ("f", self._id(st.st_ino), mode)
        if stat.S_ISLNK(st.st_mode):
            return ("l", os.readlink(full), mode)
        return ("n", st.st_mode, mode)

    def _sync_dir(self, full: str) -> None:
        uid = self._id(os.lstat(full).st_ino)
        entries = {}
        for name in os.listdir(full):
            try:
                entries[name] = self._entry(os.path.join(full, name))
            except FileNotFoundError:
                continue
        self.dirs[uid] = entries

    def _sync_file(self, uid: int, fd: int) -> None:
        target = os.path.join(self.store, str(uid))
        out = os.open(target, os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            if uid in self.shrunk:
                os.ftruncate(out, self.shrunk.pop(uid))
            for start, end in _merged(self.dirty.pop(uid, [])):
                data = os.pread(fd, end - start, start)
                if data:
                    os.pwrite(out, data, start)
            os.ftruncate(out, os.fstat(fd).st_size)
        finally:
            os.close(out)
        self.syncs += 1

    def checkpoint(self) -> None:
        """Everything as it is now becomes durable."""
        with self._mutex:
            for top, dirnames, filenames in os.walk(self.root):
                self._sync_dir(top)
                for name in filenames:
                    full = os.path.join(top, name)
                    st = os.lstat(full)
                    if stat.S_ISREG(st.st_mode):
                        uid = self._id(st.st_ino)
                        shutil.copyfile(full, os.path.join(self.store, str(uid)))
                        self.dirty.pop(uid, None)
                        self.shrunk.pop(uid, None)

    def cut(self) -> None:
        with self._mutex:
            self.power = False

    def restore(self) -> None:
        """Replace the live files with what was durable."""
        with self._mutex:
            root_id = self._id(os.lstat(self.root).st_ino)
            for name in os.listdir(self.root):
                full = os.path.join(self.root, name)
                if os.path.isdir(full) and not os.path.islink(full):
                    shutil.rmtree(full)
                else:
                    os.unlink(full)
            self._build(root_id, self.root)

    def _build(self, dir_id: int, full: str) -> None:
        for name, entry in self.dirs.get(dir_id, {}).items():
            path = os.path.join(full, name)
            kind = entry[0]
            if kind == "d":
                os.mkdir(path, entry[2])
                self._build(entry[1], path)
            elif kind == "f":
                source = os.path.join(self.store, str(entry[1]))
                if os.path.exists(source):
                    shutil.copyfile(source, path)
                else:
                    open(path, "wb").close()
            elif kind == "l":
                os.symlink(entry[1], path)
                continue
            else:
                os.mknod(path, entry[1])
            os.chmod(path, entry[2])

    # -- file system operations ---------------------------------------------------------
    def _check(self) -> None:
        if not self.power:
            raise _os_error(errno.EIO)

    def getattr(self, path, fh=None):
        with self._mutex:
            self._check()
            st = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
            out = {key: getattr(st, key) for key in (
                "st_mode", "st_ino", "st_nlink", "st_uid", "st_gid", "st_size", "st_blocks",
                "st_blksize")}
            out.update(st_atime=st.st_atime_ns, st_mtime=st.st_mtime_ns,
                       st_ctime=st.st_ctime_ns)
            return out

    def access(self, path, amode):
        with self._mutex:
            self._check()
            if not os.access(self._full(path), amode):
                raise _os_error(errno.EACCES)
            return 0

    def readlink(self, path):
        with self._mutex:
            self._check()
            return os.readlink(self._full(path))

    def opendir(self, path):
        with self._mutex:
            self._check()
            return 0

    def readdir(self, path, fh):
        with self._mutex:
            self._check()
            full = self._full(path)
            out = []
            for name in [".", ".."] + os.listdir(full):
                try:
                    st = os.lstat(os.path.join(full, name))
                except FileNotFoundError:
                    continue
                # An entry without an inode number is skipped by readdir(3).
                out.append((name, {"st_mode": st.st_mode, "st_ino": st.st_ino}, 0))
            return out

    def releasedir(self, path, fh):
        return 0

    def fsyncdir(self, path, datasync, fh):
        with self._mutex:
            self._check()
            self._sync_dir(self._full(path))
            return 0

    def mkdir(self, path, mode):
        with self._mutex:
            self._check()
            full = self._full(path)
            os.mkdir(full, mode)
            self._fresh(os.lstat(full).st_ino)
            return 0

    def rmdir(self, path):
        with self._mutex:
            self._check()
            os.rmdir(self._full(path))
            return 0

    def mknod(self, path, mode, dev):
        with self._mutex:
            self._check()
            full = self._full(path)
            os.mknod(full, mode, dev)
            self._fresh(os.lstat(full).st_ino)
            return 0

    def symlink(self, target, source):
        with self._mutex:
            self._check()
            full = self._full(target)
            os.symlink(source, full)
            self._fresh(os.lstat(full).st_ino)
            return 0

    def link(self, target, source):
        with self._mutex:
            self._check()
            os.link(self._full(source), self._full(target))
            return 0

    def unlink(self, path):
        with self._mutex:
            self._check()
            os.unlink(self._full(path))
            return 0

    def rename(self, old, new):
        with self._mutex:
            self._check()
            os.rename(self._full(old), self._full(new))
            return 0

    def chmod(self, path, mode):
        with self._mutex:
            self._check()
            os.chmod(self._full(path), mode)
            return 0

    def chown(self, path, uid, gid):
        with self._mutex:
            self._check()
            os.chown(self._full(path), uid, gid, follow_symlinks=False)
            return 0

    def utimens(self, path, times=None):
        with self._mutex:
            self._check()
            os.utime(self._full(path), ns=times, follow_symlinks=False)
            return 0

    def truncate(self, path, length, fh=None):
        with self._mutex:
            self._check()
            full = self._full(path)
            os.truncate(full, length)
            uid = self._id(os.lstat(full).st_ino)
            self.shrunk[uid] = min(self.shrunk.get(uid, length), length)
            return 0

    def _opened(self, fd: int, flags: int) -> int:
        uid = self._id(os.fstat(fd).st_ino)
        self.fh_ids[fd] = uid
        if flags & os.O_TRUNC:
            self.shrunk[uid] = 0
        return fd

    def open(self, path, flags):
        with self._mutex:
            self._check()
            fd = os.open(self._full(path), _backing_flags(flags))
            return self._opened(fd, flags)

    def create(self, path, mode, flags=os.O_WRONLY):
        with self._mutex:
            self._check()
            full = self._full(path)
            existed = os.path.lexists(full)
            fd = os.open(full, _backing_flags(flags) | os.O_CREAT, mode)
            if not existed:
                self._fresh(os.fstat(fd).st_ino)
            return self._opened(fd, flags)

    def read(self, path, size, offset, fh):
        with self._mutex:
            self._check()
            return os.pread(fh, size, offset)

    def write(self, path, data, offset, fh):
        with self._mutex:
            self._check()
            n = os.pwrite(fh, data, offset)
            self.dirty.setdefault(self.fh_ids[fh], []).append((offset, offset + n))
            return n

    def flush(self, path, fh):
        with self._mutex:
            self._check()
            return 0

    def fsync(self, path, datasync, fh):
        with self._mutex:
            self._check()
            self._sync_file(self.fh_ids[fh], fh)
            return 0

    def release(self, path, fh):
        with self._mutex:
            self.fh_ids.pop(fh, None)
            os.close(fh)
            return 0

    def statfs(self, path):
        st = os.statvfs(self.root)
        return {key: getattr(st, key) for key in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}


def _merged(ranges):
    out = []
    for start, end in sorted(ranges):
        if out and start <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], end))
        else:
            out.append((start, end))
    return out


def _os_error(code):
    from mfusepy import FuseOSError
    return FuseOSError(code)


def _serve_control(ops: CrashOps, path: str) -> None:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    while True:
        conn, _ = server.accept()
        with conn:
            command = conn.makefile().readline().strip()
            try:
                answer = {"checkpoint": ops.checkpoint, "cut": ops.cut,
                          "restore": ops.restore, "ping": lambda: None}[command]() or "ok"
            except Exception as exc:  # reported to the test
                answer = f"error {exc!r}"
            conn.sendall(f"{answer}\n".encode())


def main(argv=None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--backing", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument("--mount", required=True)
    parser.add_argument("--control", required=True)
    args = parser.parse_args(argv)
    import mfusepy

    ops = CrashOps(args.backing, args.store)
    threading.Thread(target=_serve_control, args=(ops, args.control), daemon=True).start()
    mfusepy.FUSE(ops, args.mount, foreground=True, nothreads=False, hard_remove=True,
                 use_ino=True, fsname="crashfs")
    return 0


class CrashFS:
    """The test's handle: mounts the file system in a process of its own."""

    def __init__(self, base: str):
        self.base = base
        self.backing = os.path.join(base, "backing")
        self.mountpoint = os.path.join(base, "mnt")
        self.control = os.path.join(base, "control.sock")
        self.log_path = os.path.join(base, "crashfs.log")
        self.proc: subprocess.Popen | None = None
        self._round = 0
        for d in (self.backing, self.mountpoint):
            os.makedirs(d, exist_ok=True)

    def mount(self) -> "CrashFS":
        if not os.path.exists("/dev/fuse"):
            raise RuntimeError("power-cut tests need /dev/fuse (and Debian's fuse3)")
        self._round += 1
        if os.path.exists(self.control):
            os.unlink(self.control)
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.helpers.crashfs", "--backing", self.backing,
             "--store", os.path.join(self.base, f"durable-{self._round}"),
             "--mount", self.mountpoint, "--control", self.control],
            cwd=root, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        deadline = time.monotonic() + 30
        while not (os.path.ismount(self.mountpoint) and os.path.exists(self.control)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"crashfs did not mount: {self._log_tail()}")
            time.sleep(0.05)
        self.command("ping")
        return self

    def command(self, what: str) -> None:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(120)
            s.connect(self.control)
            s.sendall(f"{what}\n".encode())
            answer = s.makefile().readline().strip()
        if answer != "ok":
            raise RuntimeError(f"crashfs {what}: {answer}")

    def checkpoint(self) -> None:
        self.command("checkpoint")

    def cut(self) -> None:
        """The power cut: nothing more becomes durable; every operation fails."""
        self.command("cut")

    def restore(self) -> None:
        """After the processes using it are dead: what was durable, mounted again."""
        self.command("restore")
        self.unmount()
        self.mount()

    def unmount(self) -> None:
        if self.proc is None:
            return
        if subprocess.run(["fusermount3", "-u", "-z", self.mountpoint],
                          capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", self.mountpoint], capture_output=True)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self.proc = None

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()[-2000:]
        except OSError:
            return ""


if __name__ == "__main__":
    sys.exit(main())
