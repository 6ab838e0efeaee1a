"""``wav.scp`` pipe entries: the standard decoder commands read natively, the rest by opt-in.

Kaldi and ESPnet data dirs often name audio by a command whose standard output is a WAV
stream, the entry ending in ``|`` (``<utt> flac -c -d -s /corpus/a.flac |``). Running such
text with a shell executes whatever a data file says, so elp does not: :func:`parse_pipe`
recognises the common decoder commands and returns what they would produce as a
:class:`NativeRead` (the file, the channel, the output rate, a speed factor), which
:mod:`elp.data.audio` reads with soundfile and resamples itself. No process is started.

========================================== =================================================
form (the entry ends with ``|``)           read natively as
========================================== =================================================
``flac -c -d -s PATH``                     PATH
``sox PATH -t wav -`` + options/effects    PATH; ``-r R`` / ``rate R``: output rate R;
                                           ``-c 1`` / ``channels 1``: mono; ``remix N``:
                                           channel N; ``speed F``: speed perturbation
``sph2pipe -f wav [-p] [-c N] PATH``       PATH (uncompressed NIST SPHERE; channel N)
``ffmpeg -i PATH [-ar R] [-ac C] -f wav -`` PATH; ``-ar R``: output rate R
``cat PATH``                               PATH
``A | sox -t wav - -t wav - <effects>``    A, then the effects (as Kaldi's speed perturbation
                                           writes them)
========================================== =================================================

Anything else ending in ``|`` (other programs or options, shell variables, globs,
redirections) is a *shell pipe*: it runs only when the user opts in (``allow_shell_pipes``),
exactly as Kaldi runs it (``sh -c "<command>"``, WAV bytes read from its standard output).
Entries that start with ``|``, hold a ``|`` elsewhere (``cmd |:0``), or are ``-`` are refused
whatever the option.

Examples
--------
>>> parse_pipe("flac -c -d -s /corpus/84/121123/84-121123-0000.flac |")
NativeRead(path='/corpus/84/121123/84-121123-0000.flac', channel=None, rate=None, speed=1.0)
>>> parse_pipe("sox /c/a.wav -t wav -r 8000 - remix 2 |")
NativeRead(path='/c/a.wav', channel=1, rate=8000, speed=1.0)
>>> parse_pipe("gunzip -c /c/a.wav.gz |") is None  # not a known form: a shell pipe
True
>>> pipe_kind("gunzip -c /c/a.wav.gz |"), pipe_kind("/c/a.wav"), pipe_kind("cmd |:0")
('shell', None, 'refused')
"""
from __future__ import annotations

import io
import logging
import os
import re
import shlex
import subprocess
from dataclasses import dataclass

logger = logging.getLogger(__name__)

SHELL_PIPE_OPT_IN = ("allow_shell_pipes: true in the recipe YAML or on its command line "
                     "(./run.sh -- --allow_shell_pipes true), validate_data.py --allow-shell-pipes, "
                     "or allow_shell_pipes=True in Python")
"""How a user opts in to running shell pipes, worded to follow "opt in with"."""

_PUNCTUATION = "();<>|&"
_SHELL_SPECIAL = re.compile(r"[$`*?\[\]{}~\\'\"!#=]")
_logged_forms: set[str] = set()


@dataclass(frozen=True)
class NativeRead:
    """What a recognised decoder pipe produces, as elp reads it without a shell.

    Parameters
    ----------
    path
        The audio file the command decodes (read with soundfile).
    channel
        0-based channel the command selects; None keeps every channel (the reader averages
        them to mono, as ``-c 1`` / ``channels 1`` / ``-ac 1`` do).
    rate
        Output sample rate in Hz the command converts to; None keeps the file's rate.
    speed
        Speed-perturbation factor (sox ``speed F``: tempo and pitch scaled by F, the length
        by 1/F, the rate kept); 1.0 is none.
    """

    path: str
    channel: int | None = None
    rate: int | None = None
    speed: float = 1.0


# --------------------------------------------------------------------------- tokenising
def _stages(entry: str) -> list[list[str]] | None:
    """The words of each pipeline stage of an entry ending in ``|`` (None: not a plain pipeline)."""
    text = entry.strip()
    if not text.endswith("|") or text.startswith("|"):
        return None
    try:
        lexer = shlex.shlex(text[:-1], posix=True, punctuation_chars=_PUNCTUATION)
        lexer.whitespace_split = True
        tokens = list(lexer)
    except ValueError:  # unbalanced quotes
        return None
    stages: list[list[str]] = [[]]
    for token in tokens:
        if token == "|":
            stages.append([])
        elif token and all(ch in _PUNCTUATION for ch in token):
            return None  # ; & > < ( ) || && ...: more than a pipeline
        else:
            stages[-1].append(token)
    if any(not stage for stage in stages):
        return None
    try:
        raw = shlex.shlex(text[:-1], posix=False, punctuation_chars=_PUNCTUATION)
        raw.whitespace_split = True
        raw_words = list(raw)
    except ValueError:
        return None
    if any(_SHELL_SPECIAL.search(word) for word in raw_words if not _is_quoted_path(word)):
        return None  # variables, globs, escapes, home dirs: only a shell knows what they mean
    return stages


def _is_quoted_path(word: str) -> bool:
    """A whole word in single or double quotes without expansions (``'/a b/c.flac'``)."""
    if len(word) < 2 or word[0] != word[-1] or word[0] not in "'\"":
        return False
    return word[0] == "'" and "'" not in word[1:-1] or not re.search(r"[$`\\!\"]", word[1:-1])


def _parse_rate(value: str) -> int | None:
    """``16000``, ``16k``, ``22.05k`` -> Hz (None when not a rate)."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kK]?)", value)
    if match is None:
        return None
    rate = float(match.group(1)) * (1000 if match.group(2) else 1)
    return int(round(rate)) if rate >= 1 else None


def _positive_int(value: str) -> int | None:
    return int(value) if value.isdigit() and int(value) > 0 else None


# --------------------------------------------------------------------------- one parser per program
@dataclass
class _Stage:
    """One stage's contribution: its input (a path, or ``-`` for the previous stage) and effects."""

    source: str
    channel: int | None = None
    mono: bool = False
    rate: int | None = None
    speed: float = 1.0


def _flac(args: list[str]) -> _Stage | None:
    decode, stdout, positional = False, False, []
    for arg in args:
        if arg in ("-d", "--decode"):
            decode = True
        elif arg in ("-c", "--stdout"):
            stdout = True
        elif arg in ("-s", "--silent", "-f", "--force"):
            pass
        elif re.fullmatch(r"-[cdsf]{2,4}", arg):
            decode, stdout = decode or "d" in arg, stdout or "c" in arg
        elif arg.startswith("-"):
            return None
        else:
            positional.append(arg)
    if not (decode and stdout) or len(positional) != 1:
        return None
    return _Stage(positional[0])


_SOX_FORMAT_VALUE = {"-t", "--type", "-r", "--rate", "-c", "--channels", "-b", "--bits", "-e", "--encoding"}
_SOX_GLOBAL_FLAGS = {"-q", "--no-show-progress", "-G", "--guard", "--no-glob", "-R"}


def _sox(args: list[str]) -> _Stage | None:
    files: list[dict] = []  # per file: its format options and name
    pending: dict = {}
    index = 0
    while index < len(args) and len(files) < 2:
        arg = args[index]
        if arg in _SOX_FORMAT_VALUE:
            if index + 1 >= len(args):
                return None
            pending[arg.lstrip("-")[0]] = args[index + 1]
            index += 2
        elif arg in _SOX_GLOBAL_FLAGS or re.fullmatch(r"-V\d?", arg):
            index += 1
        elif arg.startswith("-") and arg != "-":
            return None
        else:
            files.append({**pending, "name": arg})
            pending = {}
            index += 1
    if len(files) != 2 or pending:
        return None
    source, output = files
    if output["name"] != "-" or output.get("t") not in ("wav", "wavpcm"):
        return None
    if set(source) - {"name", "t"}:
        return None  # raw-input options (-r/-c/-b/-e on the input): only for headerless audio
    if source["name"] == "-" and source.get("t") not in (None, "wav", "wavpcm"):
        return None
    stage = _Stage(source["name"])
    if "r" in output:
        stage.rate = _parse_rate(output["r"])
        if stage.rate is None:
            return None
    if "c" in output:
        if _positive_int(output["c"]) != 1:
            return None
        stage.mono = True
    if "b" in output and output["b"] not in ("8", "16", "24", "32"):
        return None
    if "e" in output and output["e"] not in ("signed-integer", "signed", "floating-point", "float"):
        return None
    effects = args[index:]
    position = 0
    while position < len(effects):
        name = effects[position]
        if name == "rate":
            position += 1
            while position < len(effects) and re.fullmatch(r"-[vhmlqsI]", effects[position]):
                position += 1  # quality flags: elp's resampler is used whatever they say
            if position >= len(effects) or _parse_rate(effects[position]) is None:
                return None
            stage.rate = _parse_rate(effects[position])
        elif name == "remix":
            position += 1
            channel = _positive_int(effects[position]) if position < len(effects) else None
            if channel is None:
                return None
            stage.channel, stage.mono = channel - 1, True
        elif name == "channels":
            position += 1
            if position >= len(effects) or _positive_int(effects[position]) != 1:
                return None
            stage.mono = True
        elif name == "speed":
            position += 1
            try:
                factor = float(effects[position])
            except (IndexError, ValueError):
                return None
            if not 0.1 <= factor <= 10.0:
                return None
            stage.speed *= factor
        else:
            return None
        position += 1
    return stage


def _sph2pipe(args: list[str]) -> _Stage | None:
    fmt, channel, positional, index = None, None, [], 0
    while index < len(args):
        arg = args[index]
        if arg in ("-f", "-c") and index + 1 < len(args):
            if arg == "-f":
                fmt = args[index + 1]
            else:
                channel = _positive_int(args[index + 1])
                if channel is None or channel > 2:
                    return None
            index += 2
            continue
        if arg == "-p":
            pass
        elif arg.startswith("-"):
            return None  # -t/-s (ranges), -u/-a (mu-law/a-law output), -h (header)
        else:
            positional.append(arg)
        index += 1
    if fmt not in ("wav", "rif") or len(positional) != 1:
        return None
    return _Stage(positional[0], channel=None if channel is None else channel - 1, mono=channel is not None)


_FFMPEG_FLAGS = {"-hide_banner", "-nostdin", "-y", "-vn", "-nostats"}
_FFMPEG_VALUE = {"-loglevel", "-v", "-i", "-ar", "-ac", "-f", "-acodec", "-c:a", "-codec:a", "-map_metadata",
                 "-threads"}


def _ffmpeg(args: list[str]) -> _Stage | None:
    options, positional, index = {}, [], 0
    while index < len(args):
        arg = args[index]
        if arg in _FFMPEG_FLAGS:
            index += 1
        elif arg in _FFMPEG_VALUE and index + 1 < len(args):
            if arg in options:
                return None
            options[arg] = args[index + 1]
            index += 2
        elif arg.startswith("-") and arg != "-":
            return None
        else:
            positional.append(arg)
            index += 1
    if "-i" not in options or options.get("-f") != "wav" or positional not in (["-"], ["pipe:1"], ["pipe:"]):
        return None
    codec = options.get("-acodec", options.get("-c:a", options.get("-codec:a", "pcm_s16le")))
    if not codec.startswith("pcm_"):
        return None
    source = options["-i"]
    stage = _Stage("-" if source in ("pipe:0", "pipe:") else source)
    if "-ar" in options:
        stage.rate = _parse_rate(options["-ar"])
        if stage.rate is None:
            return None
    if "-ac" in options:
        if _positive_int(options["-ac"]) != 1:
            return None
        stage.mono = True
    return stage


def _cat(args: list[str]) -> _Stage | None:
    return _Stage(args[0]) if len(args) == 1 and not args[0].startswith("-") else None


_PROGRAMS = {"flac": _flac, "sox": _sox, "sph2pipe": _sph2pipe, "ffmpeg": _ffmpeg, "cat": _cat}


def parse_pipe(entry: str) -> NativeRead | None:
    """Recognise a standard decoder pipe of ``wav.scp`` and say what to read instead.

    Nothing is run: the words of the command are parsed (POSIX quoting) and matched against
    the forms of the module docstring; a later stage may only be ``sox`` (or ``ffmpeg``)
    reading the previous stage's WAV from ``-``.

    Returns
    -------
    NativeRead | None
        The file and what the command does to it; None when the entry is not a pipe, or is a
        pipe elp does not know (it then needs ``allow_shell_pipes``, see :func:`pipe_kind`).

    Examples
    --------
    >>> parse_pipe("flac -c -d -s /c/a.flac |")
    NativeRead(path='/c/a.flac', channel=None, rate=None, speed=1.0)
    >>> parse_pipe("sph2pipe -f wav -p -c 2 /c/sw02001.sph |")
    NativeRead(path='/c/sw02001.sph', channel=1, rate=None, speed=1.0)
    >>> parse_pipe("sox /c/a.wav -t wav - rate 16k channels 1 |")
    NativeRead(path='/c/a.wav', channel=None, rate=16000, speed=1.0)
    >>> parse_pipe("ffmpeg -i '/c/my talk.m4a' -ar 16000 -ac 1 -f wav - |")
    NativeRead(path='/c/my talk.m4a', channel=None, rate=16000, speed=1.0)
    >>> parse_pipe("flac -c -d -s /c/a.flac | sox -t wav - -t wav - speed 0.9 |")
    NativeRead(path='/c/a.flac', channel=None, rate=None, speed=0.9)
    >>> parse_pipe("cat $CORPUS/a.wav |") is None  # a variable: only a shell knows its value
    True
    >>> parse_pipe("/c/a.flac") is None  # a plain path is no pipe
    True
    """
    stages = _stages(entry)
    if stages is None:
        return None
    parsed = []
    for words in stages:
        parser = _PROGRAMS.get(os.path.basename(words[0]))
        stage = parser(words[1:]) if parser is not None else None
        if stage is None:
            return None
        parsed.append(stage)
    first, rest = parsed[0], parsed[1:]
    if first.source == "-" or any(stage.source != "-" for stage in rest):
        return None
    channel, mono, rate, speed = first.channel, first.mono, first.rate, first.speed
    for stage in rest:
        if stage.channel is not None and stage.channel > 0 and mono:
            return None  # selects a channel the earlier stage already mixed away
        if stage.channel is not None and not mono:
            channel = stage.channel
        mono = mono or stage.mono
        speed *= stage.speed
        rate = stage.rate if stage.rate is not None else rate
    return NativeRead(first.source, channel, rate, round(speed, 6))


def pipe_kind(entry: str) -> str | None:
    """How elp treats an entry: ``None`` (no pipe), ``"native"``, ``"shell"`` or ``"refused"``.

    Returns
    -------
    str | None
        ``"native"``: :func:`parse_pipe` recognises it; ``"shell"``: a command ending in ``|``
        that runs only with ``allow_shell_pipes``; ``"refused"``: a ``|`` anywhere else (never
        run); None: no ``|`` at all.

    Examples
    --------
    >>> [pipe_kind(e) for e in ("a.wav", "cat a.wav |", "sox a.mp3 -t wav - reverse |", "| cat a.wav")]
    [None, 'native', 'shell', 'refused']
    """
    if "|" not in entry:
        return None
    if parse_pipe(entry) is not None:
        return "native"
    text = entry.strip()
    if text.endswith("|") and not text.startswith("|") and text[:-1].strip() and "\x00" not in text:
        return "shell"
    return "refused"


def shell_command(entry: str) -> str:
    """The command Kaldi would run for a shell-pipe entry (the entry without its last ``|``).

    Examples
    --------
    >>> shell_command("sox a.mp3 -t wav - reverse |")
    'sox a.mp3 -t wav - reverse'
    """
    return entry.strip()[:-1].strip()


def _command_form(command: str) -> str:
    """The program names of a command's stages (``"gunzip | sox"``), for logging once per form."""
    names = []
    for part in command.split("|"):
        words = part.split()
        names.append(os.path.basename(words[0]) if words else "")
    return " | ".join(names)


def run_shell_pipe(entry: str, where: str = "") -> bytes:
    """Run a shell-pipe entry as Kaldi does (``sh -c``) and return its standard output.

    Call it only when the user opted in (``allow_shell_pipes``). The first command of each
    form (its program names) is logged with a warning.

    Parameters
    ----------
    where
        Prefix of error messages (``"utt 'u1': "``).

    Returns
    -------
    bytes
        What the command wrote to standard output (a WAV stream).

    Raises
    ------
    elp.data.errors.AudioError
        The command failed or wrote nothing (its exit status and the end of its stderr).

    Examples
    --------
    >>> import numpy as np, soundfile as sf, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(path, np.zeros(160, dtype="float32"), 16000)
    >>> run_shell_pipe(f"cat {path} | cat |")[:4]
    b'RIFF'
    """
    from elp.data.errors import AudioError

    command = shell_command(entry)
    form = _command_form(command)
    if form not in _logged_forms:
        _logged_forms.add(form)
        logger.warning("running wav.scp commands with a shell (allow_shell_pipes is on), first of the form "
                       "%r: sh -c %r", form, command)
    try:
        proc = subprocess.run(["sh", "-c", command], stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, check=False)
    except OSError as error:
        raise AudioError(f"{where}cannot run {command!r}: {error}") from None
    if proc.returncode != 0 or not proc.stdout:
        tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
        raise AudioError(f"{where}wav.scp command {command!r} failed (exit status {proc.returncode}: "
                         f"{tail[0]}); fix the command or convert the audio to files")
    return proc.stdout


def fix_streamed_wav(data: bytes) -> bytes:
    """Set the RIFF and data chunk sizes of a WAV stream to what it holds.

    Programs writing WAV to a pipe cannot seek back to write the sizes, so they write 0 or
    0xFFFFFFFF; the last chunk is taken to run to the end of the bytes.

    Parameters
    ----------
    data
        A RIFF/WAVE stream (anything else is returned unchanged).

    Examples
    --------
    >>> import numpy as np, soundfile as sf
    >>> buffer = io.BytesIO(); sf.write(buffer, np.zeros(100, dtype="int16"), 8000, format="WAV")
    >>> streamed = bytearray(buffer.getvalue()); streamed[40:44] = b"\\xff\\xff\\xff\\xff"
    >>> sf.info(io.BytesIO(fix_streamed_wav(bytes(streamed)))).frames
    100
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    out = bytearray(data)
    out[4:8] = (len(data) - 8).to_bytes(4, "little")
    position = 12
    while position + 8 <= len(data):
        size = int.from_bytes(data[position + 4:position + 8], "little")
        if data[position:position + 4] == b"data":
            out[position + 4:position + 8] = (len(data) - position - 8).to_bytes(4, "little")
            break
        position += 8 + size + (size & 1)
    return bytes(out)


def decode_wav_bytes(data: bytes, where: str = ""):
    """Decode a command's WAV (or any soundfile format) output: ``(samples [T, C] float32, rate in Hz, subtype)``.

    ``where`` prefixes error messages.

    Raises
    ------
    elp.data.errors.AudioError
        Not decodable audio.
    """
    import soundfile

    from elp.data.errors import AudioError

    try:
        with soundfile.SoundFile(io.BytesIO(fix_streamed_wav(data))) as sound:
            samples = sound.read(dtype="float32", always_2d=True)
            return samples, int(sound.samplerate), sound.subtype
    except (RuntimeError, TypeError, ValueError) as error:
        raise AudioError(f"{where}the command's output is not audio soundfile reads ({error}); "
                         "make it write WAV to standard output (e.g. '-t wav -' for sox)") from None
