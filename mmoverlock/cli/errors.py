"""Error formatting of the tools: mmoverlock's own check errors and the mistakes mmengine answers with a long
traceback (an unknown registry type or constructor argument, an annotation file that does not parse) end a tool
in one line on stderr."""
import os
import os.path as osp
import traceback
from contextlib import contextmanager
from typing import Any, List, Optional

from .device import is_main_process

PACKAGE_DIR = osp.dirname(osp.dirname(osp.abspath(__file__))) + os.sep
#: what mmoverlock's checks raise (each a one-line message naming the value and the fix)
CHECK_ERRORS = (ValueError, FileNotFoundError, TypeError)


def own_check_error(err: BaseException, *files: str) -> Optional[BaseException]:
    """The error raised by mmoverlock's own code (or by code in ``files``, e.g. a tool's own checks) in
    ``err``'s chain (mmengine's registry re-raises a backbone's ValueError with the class names prefixed), or
    None when the error is not theirs."""
    own_files = {osp.abspath(f) for f in files}
    for candidate in reversed(exception_chain(err)):   # the innermost first
        frames = traceback.extract_tb(candidate.__traceback__)
        where = osp.abspath(frames[-1].filename) if frames else ''
        if isinstance(candidate, CHECK_ERRORS) and (where.startswith(PACKAGE_DIR) or where in own_files):
            return candidate
    return None


@contextmanager
def one_line_errors(tool: str, *files: str):
    """Around building and running the Runner: an error of mmoverlock's checks (the channel and checkpoint
    hooks' ``before_run``, the backbone's arguments) or a mistake of :func:`known_mistake` ends the tool in one
    line on stderr, from rank 0 only (the other ranks exit silently with the same status); any other error keeps
    its traceback. ``files``: more source files whose errors are checks (the tool's own)."""
    try:
        yield
    except Exception as err:
        own = own_check_error(err, *files) if isinstance(err, CHECK_ERRORS) else None
        message = str(own) if own is not None else known_mistake(err)
        if message is None:
            raise
        raise SystemExit(f'{tool}: error: {message}' if is_main_process() else 1) from None


def exception_chain(err: BaseException) -> List[BaseException]:
    """``err`` and the exceptions it was raised from or during, the innermost last."""
    chain, seen = [], set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        chain.append(err)
        err = err.__cause__ or err.__context__
    return chain


def _frames(err: BaseException) -> List[Any]:
    """The frames of ``err``'s traceback, the innermost first."""
    frames, tb = [], err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    return frames[::-1]


def _registry_names(registry) -> List[str]:
    """Every name a config can give ``type`` in ``registry``'s scope: its own and its parents' names bare, the
    other registries' of the tree with their scope prefix (``mmoverlock.OverLoCK``)."""
    names, node, reachable = [], registry, []
    while node is not None:
        names += list(node.module_dict)
        reachable.append(node)
        node = node.parent
    todo = [registry.root]
    while todo:
        node = todo.pop()
        if not any(node is r for r in reachable):
            names += [f'{node.scope}.{key}' for key in node.module_dict]
        todo += list(node.children.values())
    return list(dict.fromkeys(names))


def closest(name: str, candidates: List[str], count: int = 3) -> List[str]:
    """The ``candidates`` closest to ``name`` (case-insensitive; a scoped candidate also by its bare name), the
    best first; none when nothing is close."""
    import difflib

    def score(candidate: str) -> float:
        ratio = difflib.SequenceMatcher(None, name.lower(), candidate.lower()).ratio()
        bare = difflib.SequenceMatcher(None, name.split('.')[-1].lower(), candidate.split('.')[-1].lower()).ratio()
        return max(ratio, bare - 0.01)   # an exact full match before the same bare name in another scope

    scored = sorted(((score(c), c) for c in candidates), key=lambda sc: -sc[0])
    best = scored[0][0] if scored else 0.
    return [c for s, c in scored[:count] if s >= max(0.6, best - 0.1)]   # the near-best only


def _did_you_mean(names: List[str]) -> str:
    return 'did you mean ' + ' or '.join(f"'{n}'" for n in names) + '?' if names else ''


def _unknown_type(err: KeyError) -> Optional[str]:
    """mmengine's ``KeyError: 'X is not in the mmdet::model registry. Please check ...'``."""
    for frame in _frames(err):
        if frame.f_code.co_name != 'build_from_cfg' or 'obj_type' not in frame.f_locals:
            continue
        obj_type, registry = frame.f_locals['obj_type'], frame.f_locals.get('registry')
        if not isinstance(obj_type, str) or f'{obj_type} is not in the' not in str(err):
            return None
        where = f'{registry.split_scope_key(obj_type)[0] or registry.scope}::{registry.name}'
        hint = _did_you_mean(closest(obj_type, _registry_names(registry)))
        return f"unknown type '{obj_type}': not in the {where} registry" + (f'; {hint}' if hint else
                                                                            ' (nor close to a name in it)')
    return None


def _init_arguments(cls) -> List[str]:
    """The keyword arguments ``cls(...)`` takes: its ``__init__``'s and, through ``**kwargs``, its bases'."""
    import inspect
    names = []
    for klass in getattr(cls, '__mro__', [cls]):
        init = klass.__dict__.get('__init__') if isinstance(cls, type) else cls
        if init is None:
            continue
        try:
            params = inspect.signature(init).parameters.values()
        except (TypeError, ValueError):
            continue
        names += [p.name for p in params if p.name != 'self' and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if not any(p.kind == p.VAR_KEYWORD for p in params):
            break
    return list(dict.fromkeys(names))


def _unknown_argument(err: TypeError) -> Optional[str]:
    """``TypeError: X.__init__() got an unexpected keyword argument 'y'`` from a config's ``dict(type=X, y=...)``."""
    import re
    found = re.search(r"unexpected keyword argument '(\w+)'", str(err))
    if found is None:
        return None
    for frame in _frames(err):   # raised by the call in build_from_cfg or by the __init__s it ran
        if frame.f_code.co_name != 'build_from_cfg':
            if frame.f_code.co_name == '__init__':
                continue
            return None
        bad = found.group(1)
        if 'obj_cls' not in frame.f_locals or bad not in (frame.f_locals.get('args') or {}):
            return None   # not a keyword of the config's dict: a bug elsewhere keeps its traceback
        cls, registry = frame.f_locals['obj_cls'], frame.f_locals.get('registry')
        known = _init_arguments(cls)
        hint = _did_you_mean(closest(bad, known)) or f'its arguments: {", ".join(known)}'
        scope = f' ({registry.scope}::{registry.name})' if registry is not None else ''
        return f"{getattr(cls, '__name__', cls)}{scope} got an unknown argument '{bad}'; {hint}"
    return None


def _file_of(err: BaseException) -> Optional[str]:
    """The file being read when ``err`` was raised: an open file or an existing path among the locals of the
    innermost frames."""
    for frame in _frames(err):
        for value in frame.f_locals.values():
            name = getattr(value, 'name', None) if hasattr(value, 'read') else value
            if isinstance(name, str) and 0 < len(name) < 4096 and osp.isfile(name):
                return name
    return None


def _malformed_file(err: BaseException) -> Optional[str]:
    """A JSON (COCO annotations) or XML (VOC) file that does not parse: the file, the parser's position."""
    import json
    from xml.etree.ElementTree import ParseError
    if isinstance(err, json.JSONDecodeError):
        what, position = 'JSON', f'{err.msg}: line {err.lineno} column {err.colno} (char {err.pos})'
    elif isinstance(err, ParseError):
        what, position = 'XML', str(err)
    else:
        return None
    path = _file_of(err)
    name = f"annotation file '{path}'" if path else 'an annotation file'
    return f'{name} is not valid {what} ({position}); is it truncated? download or write it again'


def known_mistake(err: BaseException) -> Optional[str]:
    """One line for the mistakes mmengine and the data sets report with a long traceback: an unknown registry
    type (with the closest registered names), an unknown constructor argument (with the closest argument names),
    an annotation file that does not parse (named, with the parser's position); None for anything else."""
    for candidate in reversed(exception_chain(err)):   # the innermost first
        if isinstance(candidate, KeyError):
            message = _unknown_type(candidate)
        elif isinstance(candidate, TypeError):
            message = _unknown_argument(candidate)
        else:
            message = _malformed_file(candidate)
        if message:
            return message
    return None
