"""Born dead: files a resumed catch-up never shows (docs/reclaim.md, step 2).

A catch-up plays entries [first, stop). A file logged and deleted inside that range may have
been reclaimed, and its units given to another file, before this host read the header: showing
it even for a moment would show memory that belongs to someone else. (A first play builds its
tree in staging/ and shows nothing until its end; this is the same guarantee for a tree that
resumes from its cursor.) Such a file is checked by the rule book and its units accounted, but
no YAML is made, and its DELETE only notes it deleted.

A pair is skipped only when nothing between the two entries could read the file: no other slot
names its path, and no RMDIR lies between (an RMDIR of its directory must see it there).
"""

from __future__ import annotations

from famfs import format as fmt
from famfs.famfslog import FamfsLog


def pairs(famfs_log: FamfsLog, first: int, stop: int) -> dict[int, tuple[int, str]]:
    """FILE index -> (DELETE index, relpath) of each file logged and deleted within [first, stop)
    that can be skipped whole. One type word and target word per slot; only a DELETE whose target
    word lies in the range is decoded (a follower's poll plays a few entries, and a run of DELETEs
    names files of earlier polls: decoding each twice was a tenth of its time, bench.follow_cost)."""
    deletes: dict[int, tuple[int, str]] = {}
    rmdirs: list[int] = []
    for index, kind, target in famfs_log.targets_of((fmt.EntryType.RMDIR, fmt.EntryType.DELETE), first, stop):
        if kind == fmt.EntryType.RMDIR:
            rmdirs.append(index)
            continue
        if not first <= target < index:
            continue
        try:
            entry = famfs_log.entry(index)
        except fmt.EntryError:
            continue  # the play rejects or stalls on it
        if isinstance(entry, fmt.DeleteEntry) and first <= entry.target_index < index:
            deletes.setdefault(entry.target_index, (index, entry.relpath))
    skipped: dict[int, tuple[int, str]] = {}
    for file_index, (delete_index, relpath) in deletes.items():
        if any(file_index < rmdir < delete_index for rmdir in rmdirs):
            continue
        naming = list(famfs_log.slots_naming(relpath, file_index, delete_index + 1))
        if naming == [(file_index, fmt.EntryType.FILE), (delete_index, fmt.EntryType.DELETE)]:
            skipped[file_index] = (delete_index, relpath)
    return skipped
