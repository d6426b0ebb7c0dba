#!/usr/bin/env python3
"""A FUSE filesystem that forgets what was never synced, for power-loss tests.

    python3 scripts/lossyfs.py BACKING MOUNTPOINT

MOUNTPOINT shows the files of BACKING. What is written to a file is kept in
this process's memory, and reaches BACKING only when the file is synced
(fsync or fdatasync); so is a change of a file's length (truncate). Killing
this process with SIGKILL is then a power cut as far as file contents go:
BACKING holds exactly what was synced, and the next mount over it shows
that. Unmount the dead mount first (umount -l MOUNTPOINT, as root).

Creating, renaming and deleting files and directories take effect in
BACKING at once, as if every directory were synced after each change: a
gentler disk than a real one, which can also lose those. The test that uses
this checks that what a server acknowledged was synced; the server also
syncs its directories where it relies on a name.

Prints "lossyfs: mounted" once the mount is ready. Needs the fusepy module
and libfuse2 (Debian's package libfuse2). Runs in the foreground, one
request at a time.
"""

import errno
import os
import sys

from fuse import FUSE, FuseOSError, Operations

PAGE = 4096


class Unsynced:
    """A file's writes since it was last synced."""

    def __init__(self, size):
        # The length the file has now.
        self.size = size
        # Bytes at or past this offset in BACKING are stale: the file was
        # cut shorter than that since its last sync.
        self.floor = size
        # Page number -> the page as it is now (PAGE bytes).
        self.pages = {}


class Lossy(Operations):
    def __init__(self, backing):
        self.backing = os.path.realpath(backing)
        self.unsynced = {}
        self.fds = {}

    # Paths and descriptors of BACKING.

    def real(self, path):
        return os.path.join(self.backing, path.lstrip("/"))

    def fd(self, path):
        fd = self.fds.get(path)
        if fd is None:
            fd = os.open(self.real(path), os.O_RDWR)
            self.fds[path] = fd
        return fd

    def forget_fd(self, path):
        fd = self.fds.pop(path, None)
        if fd is not None:
            os.close(fd)

    def synced_size(self, path):
        return os.fstat(self.fd(path)).st_size

    def state(self, path):
        state = self.unsynced.get(path)
        if state is None:
            state = Unsynced(self.synced_size(path))
            self.unsynced[path] = state
        return state

    def synced_page(self, path, state, number):
        """Page `number` as BACKING has it, zeros where it is stale."""
        start = number * PAGE
        valid = min(state.floor, self.synced_size(path)) - start
        data = os.pread(self.fd(path), min(PAGE, max(valid, 0)), start) if valid > 0 else b""
        return bytearray(data.ljust(PAGE, b"\0"))

    def page(self, path, state, number):
        page = state.pages.get(number)
        return page if page is not None else self.synced_page(path, state, number)

    # File contents: kept here until synced.

    def read(self, path, size, offset, fh):
        state = self.unsynced.get(path)
        if state is None:
            return os.pread(self.fd(path), size, offset)
        end = min(offset + size, state.size)
        out = bytearray()
        position = offset
        while position < end:
            number, within = divmod(position, PAGE)
            take = min(PAGE - within, end - position)
            out += self.page(path, state, number)[within : within + take]
            position += take
        return bytes(out)

    def write(self, path, data, offset, fh):
        state = self.state(path)
        position, written = offset, 0
        while written < len(data):
            number, within = divmod(position, PAGE)
            take = min(PAGE - within, len(data) - written)
            page = self.page(path, state, number)
            page[within : within + take] = data[written : written + take]
            state.pages[number] = page
            position += take
            written += take
        state.size = max(state.size, offset + len(data))
        return len(data)

    def truncate(self, path, length, fh=None):
        state = self.state(path)
        if length < state.size:
            last = length // PAGE
            for number in [n for n in state.pages if n > last]:
                del state.pages[number]
            within = length % PAGE
            page = self.page(path, state, last)
            page[within:] = bytes(PAGE - within)
            state.pages[last] = page
            state.floor = min(state.floor, length)
        state.size = length

    def fsync(self, path, datasync, fh):
        state = self.unsynced.pop(path, None)
        if state is None:
            return 0
        fd = self.fd(path)
        if state.floor < self.synced_size(path):
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

    def fsyncdir(self, path, datasync, fh):
        return 0

    def open(self, path, flags):
        self.fd(path)
        return 0

    def getattr(self, path, fh=None):
        try:
            st = os.lstat(self.real(path))
        except OSError as e:
            raise FuseOSError(e.errno)
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_atime", "st_mtime",
                "st_ctime", "st_blocks")
        attrs = {key: getattr(st, key) for key in keys}
        state = self.unsynced.get(path)
        if state is not None:
            attrs["st_size"] = state.size
        return attrs

    # Names: applied to BACKING at once.

    def create(self, path, mode, fi=None):
        fd = os.open(self.real(path), os.O_RDWR | os.O_CREAT, mode)
        self.forget_fd(path)
        self.fds[path] = fd
        return 0

    def unlink(self, path):
        os.unlink(self.real(path))
        self.forget_fd(path)
        self.unsynced.pop(path, None)

    def rename(self, old, new):
        os.rename(self.real(old), self.real(new))
        self.forget_fd(old)
        self.forget_fd(new)
        self.unsynced.pop(new, None)
        state = self.unsynced.pop(old, None)
        if state is not None:
            self.unsynced[new] = state

    def mkdir(self, path, mode):
        os.mkdir(self.real(path), mode)

    def rmdir(self, path):
        os.rmdir(self.real(path))

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self.real(path))

    def chmod(self, path, mode):
        os.chmod(self.real(path), mode)

    def chown(self, path, uid, gid):
        os.chown(self.real(path), uid, gid)

    def utimens(self, path, times=None):
        os.utime(self.real(path), times)

    def access(self, path, mode):
        if not os.access(self.real(path), mode):
            raise FuseOSError(errno.EACCES)

    def statfs(self, path):
        st = os.statvfs(self.real(path))
        keys = ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
                "f_flag", "f_frsize", "f_namemax")
        return {key: getattr(st, key) for key in keys}

    def init(self, path):
        print("lossyfs: mounted", flush=True)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: lossyfs.py BACKING MOUNTPOINT")
    backing, mountpoint = sys.argv[1], sys.argv[2]
    FUSE(Lossy(backing), mountpoint, foreground=True, nothreads=True)


if __name__ == "__main__":
    main()
