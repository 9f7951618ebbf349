"""This host's identity and its role in a file system.

Upstream keeps the master's system UUID in /opt/famfs/system_uuid (the 36 characters and a NUL:
upstream writes them with `write(fd, uuid, 37)`; created on first use, mode 0444). We read and write the same file by default; its path can be changed (flag,
FAMFS_SYSTEM_UUID_FILE, or `system_uuid_file` in famfs-agent.toml) so several simulated hosts on
one machine each have their own identity.
"""

from __future__ import annotations

import enum
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

from famfs import env
from famfs import format as fmt
from famfs.config import HostSettings, Settings

SYSTEM_UUID_ENV = env.SYSTEM_UUID_FILE
SYSTEM_UUID_FLAG_HELP = (f"this host's identity (default: ${SYSTEM_UUID_ENV}, then [host] system_uuid_file "
                         f"in the config, then {HostSettings.system_uuid_file})")


class Role(enum.Enum):
    MASTER = "master"
    CLIENT = "client"


class NotMasterError(PermissionError):
    def __init__(self, fs_uuid: uuid.UUID) -> None:
        super().__init__(f"this host is a client of file system {fs_uuid}: only its master may write")


def system_uuid_file(flag: str | None, configured: str) -> Path:
    """Where this host's UUID lives: the --system-uuid-file flag, else $FAMFS_SYSTEM_UUID_FILE,
    else `[host] system_uuid_file` from the settings (upstream's path by default)."""
    return Path(flag or os.environ.get(SYSTEM_UUID_ENV) or configured)


def given_system_uuid_file(flag: str | None, settings: Settings) -> Path | None:
    """The identity file named on purpose (the flag, $FAMFS_SYSTEM_UUID_FILE, or a config file's
    `[host] system_uuid_file`); None when only the built-in default would apply."""
    if flag or os.environ.get(SYSTEM_UUID_ENV) or "host.system_uuid_file" in settings.given:
        return system_uuid_file(flag, settings.host.system_uuid_file)
    return None


class IdentityError(ValueError):
    """The system-UUID file holds no UUID, or there is none to use; the message names the file."""


class IdentityConflict(IdentityError):
    """A program was given one identity and the host's agent runs with another."""


def system_uuid(path: Path, *, create: bool = True) -> uuid.UUID | None:
    """This host's UUID, created (as upstream does) if missing and `create`."""
    try:
        # Upstream's file ends in the C string's NUL; a hand-made one may end in a newline.
        text = path.read_bytes().rstrip(b"\0").strip().decode("ascii")
        return uuid.UUID(text)
    except FileNotFoundError:
        if not create:
            return None
    except (ValueError, UnicodeDecodeError) as err:
        raise IdentityError(f"{path}: not a UUID: {err}") from None
    except OSError as err:
        raise IdentityError(f"{path}: cannot read: {err.strerror}") from None
    value = uuid.uuid4()
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}")
    temp.write_text(str(value))  # the 36 characters; the reader above also takes upstream's trailing NUL
    temp.chmod(0o444)
    temp.rename(path)
    return value


def joining_identity_file(flag: str | None, settings: Settings) -> Path:
    """The identity file a host joins the host table with (the agent): one named on purpose is
    made if missing, as upstream does; the built-in default is made only by mkfs, so that no
    program leaves an identity on a host where nothing asked for one. IdentityError when only the
    default applies and it is missing, or when the file holds no UUID."""
    given = given_system_uuid_file(flag, settings)
    path = given or system_uuid_file(None, settings.host.system_uuid_file)
    if system_uuid(path, create=False) is None and given is None:
        raise IdentityError(
            f"{path} does not exist: this host has no identity (famfsctl mkfs makes it on the master); "
            f"give one with --system-uuid-file, ${SYSTEM_UUID_ENV} or [host] system_uuid_file (made if missing)")
    return path


@dataclass(frozen=True, slots=True)
class HostIdentity:
    """Who this host is: the identity file, the UUID it held when read (None: no file, a client)
    and where the choice came from (for the log and for error messages)."""

    uuid_file: Path
    system_uuid: uuid.UUID | None
    source: str

    def role(self, superblock: fmt.Superblock) -> Role:
        return Role.MASTER if self.system_uuid == superblock.system_uuid else Role.CLIENT


def agents_identity(recorded_file: str | None, recorded_uuid: str | None, given: Path | None,
                    default: Path, agent: str) -> HostIdentity:
    """The identity a program beside an agent must use: the one the agent recorded (its
    state.json: `recorded_file`, `recorded_uuid`), so that a host never acts as two hosts.

    `given` (an identity file named on purpose) must hold the agent's UUID, or IdentityConflict.
    With nothing recorded (no agent, or one from before agents recorded it), `given`, else
    `default`, is read. `agent` names the agent's state in messages.
    """
    if recorded_file is None:
        path = given or default
        return HostIdentity(path, system_uuid(path, create=False), str(path))
    try:
        recorded = uuid.UUID(recorded_uuid) if recorded_uuid else None
    except ValueError:
        raise IdentityError(f"{agent}: system_uuid {recorded_uuid!r} is not a UUID") from None
    mine = HostIdentity(Path(recorded_file), recorded, f"the agent ({agent})")
    if given is not None and (other := system_uuid(given, create=False)) != recorded:
        raise IdentityConflict(
            f"this host has two identities: the agent runs as {_who(recorded, recorded_file)} ({agent}), "
            f"this program was given {_who(other, given)}; give both the same --system-uuid-file, "
            "or none here to take the agent's")
    return mine


def _who(value: uuid.UUID | None, path: str | os.PathLike[str]) -> str:
    return f"{value} from {os.fspath(path)}" if value else f"no UUID ({os.fspath(path)} does not exist)"


def role_of(superblock: fmt.Superblock, path: Path) -> Role:
    mine = system_uuid(path, create=False)
    return Role.MASTER if mine == superblock.system_uuid else Role.CLIENT


def require_master(superblock: fmt.Superblock, path: Path) -> None:
    if role_of(superblock, path) is not Role.MASTER:
        raise NotMasterError(superblock.fs_uuid)
