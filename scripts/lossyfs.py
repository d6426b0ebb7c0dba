#!/usr/bin/env python3
"""A FUSE filesystem that forgets what was never synced, for power-loss tests.

    python3 scripts/lossyfs.py BACKING MOUNTPOINT

Everything written under MOUNTPOINT is kept in this process's memory until
it is synced, and only what was synced reaches BACKING:
- a file's contents and length, by fsync or fdatasync of the file;
- the names in a directory (files and directories created, renamed or
  deleted there), by fsync of the directory.
Killing this process with SIGKILL is then a power cut: BACKING holds
exactly what was synced, and the next mount over it shows that. Unmount the
dead mount first (umount -l MOUNTPOINT, as root).

This is stricter than most real filesystems, which also write out what was
not synced now and then, and in any order; what a program may rely on after
a power cut is what this keeps. Names are kept by path: renaming a
directory does not carry the durable names inside it along.

BACKING holds this filesystem's own layout (names.json, and each file's
synced contents under data/), not a copy of the tree. Prints
"lossyfs: mounted" once the mount is ready. Needs the fusepy module and
libfuse2 (Debian's package libfuse2). Runs in the foreground, one request at
a time.
"""

import errno
import json
import os
import stat
import sys
import time

from fuse import FUSE, FuseOSError, Operations

PAGE = 4096


class Unsynced:
    """A file's writes since it was last synced."""

    def __init__(self, size):
        # The length the file has now.
        self.size = size
        # Synced bytes at or past this offset are stale: the file was cut
        # shorter than that since its last sync.
        self.floor = size
        # Page number -> the page as it is now (PAGE bytes).
        self.pages = {}


def parent(path):
    return os.path.dirname(path) or "/"


class Lossy(Operations):
    def __init__(self, backing):
        self.backing = os.path.realpath(backing)
        os.makedirs(os.path.join(self.backing, "data"), exist_ok=True)
        self.names_file = os.path.join(self.backing, "names.json")
        try:
            with open(self.names_file) as f:
                saved = json.load(f)
        except FileNotFoundError:
            saved = {"next": 1, "names": {}}
        # What a sync of its directory made durable: path -> entry, an entry
        # being {"dir": True, "mode": m} or {"ino": n, "mode": m}.
        self.durable = {"/": {"dir": True, "mode": 0o755}}
        self.durable.update(saved["names"])
        self.next_ino = saved["next"]
        # A name whose directory's own name was never synced is gone.
        for path in sorted(self.durable, key=lambda p: p.count("/")):
            if path != "/" and parent(path) not in self.durable:
                del self.durable[path]
        self.live = dict(self.durable)
        self.unsynced = {}
        self.fds = {}

    # Names.

    def entry(self, path):
        entry = self.live.get(path)
        if entry is None:
            raise FuseOSError(errno.ENOENT)
        return entry

    def file(self, path):
        entry = self.entry(path)
        if entry.get("dir"):
            raise FuseOSError(errno.EISDIR)
        return entry["ino"]

    def new_name(self, path):
        if path in self.live:
            raise FuseOSError(errno.EEXIST)
        if not self.live.get(parent(path), {}).get("dir"):
            raise FuseOSError(errno.ENOENT)

    def children(self, names, path):
        return [p for p in names if p != "/" and parent(p) == path]

    def create(self, path, mode, fi=None):
        self.new_name(path)
        ino = self.next_ino
        self.next_ino += 1
        self.forget_fd(ino)
        self.unsynced.pop(ino, None)
        os.close(os.open(self.data(ino), os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600))
        self.live[path] = {"ino": ino, "mode": stat.S_IMODE(mode)}
        return 0

    def mkdir(self, path, mode):
        self.new_name(path)
        self.live[path] = {"dir": True, "mode": stat.S_IMODE(mode)}

    def unlink(self, path):
        self.file(path)
        del self.live[path]

    def rmdir(self, path):
        if not self.entry(path).get("dir"):
            raise FuseOSError(errno.ENOTDIR)
        if self.children(self.live, path):
            raise FuseOSError(errno.ENOTEMPTY)
        del self.live[path]

    def rename(self, old, new):
        moving = self.entry(old)
        target = self.live.get(new)
        if target is not None and target.get("dir") and self.children(self.live, new):
            raise FuseOSError(errno.ENOTEMPTY)
        if not self.live.get(parent(new), {}).get("dir"):
            raise FuseOSError(errno.ENOENT)
        self.live.pop(new, None)
        inside = [p for p in self.live if p.startswith(old + "/")] if moving.get("dir") else []
        self.live[new] = self.live.pop(old)
        for path in inside:
            self.live[new + path[len(old):]] = self.live.pop(path)

    def readdir(self, path, fh):
        if not self.entry(path).get("dir"):
            raise FuseOSError(errno.ENOTDIR)
        return [".", ".."] + [os.path.basename(p) for p in self.children(self.live, path)]

    def fsyncdir(self, path, datasync, fh):
        for name in self.children(self.durable, path):
            del self.durable[name]
        for name in self.children(self.live, path):
            self.durable[name] = self.live[name]
        names = {p: e for p, e in self.durable.items() if p != "/"}
        temporary = self.names_file + ".new"
        with open(temporary, "w") as f:
            json.dump({"next": self.next_ino, "names": names}, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(temporary, self.names_file)
        fd = os.open(self.backing, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    def getattr(self, path, fh=None):
        entry = self.entry(path)
        now = time.time()
        if entry.get("dir"):
            return {"st_mode": stat.S_IFDIR | entry["mode"], "st_nlink": 2, "st_size": 4096,
                    "st_uid": os.getuid(), "st_gid": os.getgid(), "st_atime": now,
                    "st_mtime": now, "st_ctime": now}
        ino = entry["ino"]
        st = os.fstat(self.fd(ino))
        state = self.unsynced.get(ino)
        return {"st_mode": stat.S_IFREG | entry["mode"], "st_nlink": 1,
                "st_size": state.size if state else st.st_size, "st_uid": os.getuid(),
                "st_gid": os.getgid(), "st_atime": st.st_atime, "st_mtime": st.st_mtime,
                "st_ctime": st.st_ctime, "st_blocks": st.st_blocks}

    def chmod(self, path, mode):
        self.entry(path)["mode"] = stat.S_IMODE(mode)

    def chown(self, path, uid, gid):
        self.entry(path)

    def utimens(self, path, times=None):
        self.entry(path)

    def access(self, path, mode):
        self.entry(path)

    def statfs(self, path):
        st = os.statvfs(self.backing)
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")
        return {key: getattr(st, key) for key in keys}

    # Contents: kept here until synced. A file's synced contents are
    # BACKING/data/<its number>.

    def data(self, ino):
        return os.path.join(self.backing, "data", str(ino))

    def fd(self, ino):
        fd = self.fds.get(ino)
        if fd is None:
            fd = os.open(self.data(ino), os.O_RDWR)
            self.fds[ino] = fd
        return fd

    def forget_fd(self, ino):
        fd = self.fds.pop(ino, None)
        if fd is not None:
            os.close(fd)

    def synced_size(self, ino):
        return os.fstat(self.fd(ino)).st_size

    def state(self, ino):
        state = self.unsynced.get(ino)
        if state is None:
            state = Unsynced(self.synced_size(ino))
            self.unsynced[ino] = state
        return state

    def page(self, ino, state, number):
        page = state.pages.get(number)
        if page is not None:
            return page
        start = number * PAGE
        valid = min(state.floor, self.synced_size(ino)) - start
        data = os.pread(self.fd(ino), min(PAGE, valid), start) if valid > 0 else b""
        return bytearray(data.ljust(PAGE, b"\0"))

    def open(self, path, flags):
        self.fd(self.file(path))
        return 0

    def read(self, path, size, offset, fh):
        ino = self.file(path)
        state = self.unsynced.get(ino)
        if state is None:
            return os.pread(self.fd(ino), size, offset)
        end = min(offset + size, state.size)
        out = bytearray()
        position = offset
        while position < end:
            number, within = divmod(position, PAGE)
            take = min(PAGE - within, end - position)
            out += self.page(ino, state, number)[within : within + take]
            position += take
        return bytes(out)

    def write(self, path, data, offset, fh):
        ino = self.file(path)
        state = self.state(ino)
        position, written = offset, 0
        while written < len(data):
            number, within = divmod(position, PAGE)
            take = min(PAGE - within, len(data) - written)
            page = self.page(ino, state, number)
            page[within : within + take] = data[written : written + take]
            state.pages[number] = page
            position += take
            written += take
        state.size = max(state.size, offset + len(data))
        return len(data)

    def truncate(self, path, length, fh=None):
        ino = self.file(path)
        state = self.state(ino)
        if length < state.size:
            last = length // PAGE
            for number in [n for n in state.pages if n > last]:
                del state.pages[number]
            within = length % PAGE
            page = self.page(ino, state, last)
            page[within:] = bytes(PAGE - within)
            state.pages[last] = page
            state.floor = min(state.floor, length)
        state.size = length

    def fsync(self, path, datasync, fh):
        ino = self.file(path)
        state = self.unsynced.pop(ino, None)
        if state is None:
            return 0
        fd = self.fd(ino)
        if state.floor < self.synced_size(ino):
            os.ftruncate(fd, state.floor)
        for number in sorted(state.pages):
            os.pwrite(fd, bytes(state.pages[number]), number * PAGE)
        os.ftruncate(fd, state.size)
        os.fsync(fd)
        return 0

    def flush(self, path, fh):
        return 0

    def release(self, path, fh):
        return 0

    def init(self, path):
        print("lossyfs: mounted", flush=True)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: lossyfs.py BACKING MOUNTPOINT")
    backing, mountpoint = sys.argv[1], sys.argv[2]
    FUSE(Lossy(backing), mountpoint, foreground=True, nothreads=True)


if __name__ == "__main__":
    main()
