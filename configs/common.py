"""Shared parsing of the `get_config(arg)` string: 'variant=b2,runlocal'."""


_BOOLS = {'1': True, 'true': True, 'yes': True, '0': False, 'false': False, 'no': False}


def parse_arg(arg: str | None, **defaults):
  """Parses 'k=v,flag' into a dict over `defaults`; unknown keys fail loudly."""
  out = dict(defaults)
  for item in filter(None, (arg or '').split(',')):
    key, eq, value = item.partition('=')
    if key not in out:
      raise ValueError(f'unknown config argument {key!r}; known: {sorted(out)}')
    default = out[key]
    if not eq:
      value = True
    elif isinstance(default, bool):
      if value.lower() not in _BOOLS:
        raise ValueError(f'config argument {key}={value!r} is not a boolean (one of {sorted(_BOOLS)})')
      value = _BOOLS[value.lower()]
    elif isinstance(default, int):
      value = int(value)
    out[key] = value
  return out
