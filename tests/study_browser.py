"""Headless Chromium driven over the DevTools protocol, with only the standard library (for test_study_browser).

A WebSocket client small enough to read (RFC 6455: masked client frames, unmasked server frames, fragments,
ping/pong), a CDP session on top, and a launcher that finds `chromium` and reads its DevTools port from the
profile's DevToolsActivePort file.
"""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time

BINARIES = ('chromium', 'chromium-browser', 'google-chrome', 'google-chrome-stable', 'chrome')


def find_chromium() -> str | None:
  """$STUDY_CHROMIUM, else the first Chromium-like binary on PATH, else None."""
  env = os.environ.get('STUDY_CHROMIUM')
  if env:
    return env if os.path.isfile(env) else None
  return next((shutil.which(b) for b in BINARIES if shutil.which(b)), None)


class WebSocket:
  """A blocking text-frame WebSocket client."""

  def __init__(self, url: str, timeout: float = 10.0):
    assert url.startswith('ws://'), url
    hostport, _, path = url[len('ws://'):].partition('/')
    host, _, port = hostport.partition(':')
    self.sock = socket.create_connection((host, int(port or 80)), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    self.sock.sendall((f'GET /{path} HTTP/1.1\r\nHost: {hostport}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n'
                       f'Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n').encode())
    head = b''
    while b'\r\n\r\n' not in head:
      chunk = self.sock.recv(4096)
      if not chunk:
        raise ConnectionError('WebSocket handshake: connection closed')
      head += chunk
    head, self._buf = head.split(b'\r\n\r\n', 1)
    if b' 101 ' not in head.split(b'\r\n', 1)[0]:
      raise ConnectionError(f'WebSocket handshake refused: {head[:200]!r}')

  def _read(self, n: int) -> bytes:
    while len(self._buf) < n:
      chunk = self.sock.recv(1 << 16)
      if not chunk:
        raise ConnectionError('WebSocket closed')
      self._buf += chunk
    out, self._buf = self._buf[:n], self._buf[n:]
    return out

  def _send_frame(self, opcode: int, payload: bytes) -> None:
    n = len(payload)
    head = bytes([0x80 | opcode])
    if n < 126:
      head += bytes([0x80 | n])
    elif n < 1 << 16:
      head += bytes([0x80 | 126]) + struct.pack('>H', n)
    else:
      head += bytes([0x80 | 127]) + struct.pack('>Q', n)
    mask = os.urandom(4)
    self.sock.sendall(head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

  def send(self, text: str) -> None:
    self._send_frame(0x1, text.encode())

  def recv(self) -> str:
    parts = []
    while True:
      b0, b1 = self._read(2)
      opcode, n = b0 & 0x0F, b1 & 0x7F
      if n == 126:
        n = struct.unpack('>H', self._read(2))[0]
      elif n == 127:
        n = struct.unpack('>Q', self._read(8))[0]
      mask = self._read(4) if b1 & 0x80 else None
      data = self._read(n)
      if mask:
        data = bytes(b ^ mask[i % 4] for i, b in enumerate(data))
      if opcode == 0x9:  # ping
        self._send_frame(0xA, data)
        continue
      if opcode == 0x8:
        raise ConnectionError('WebSocket closed by the browser')
      if opcode in (0x0, 0x1, 0x2):
        parts.append(data)
        if b0 & 0x80:
          return b''.join(parts).decode()

  def close(self) -> None:
    self.sock.close()


class Cdp:
  """One DevTools connection to the browser; page commands go to an attached target's session."""

  def __init__(self, ws: WebSocket):
    self.ws, self._id, self.events = ws, 0, []

  def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
    self._id += 1
    msg = {'id': self._id, 'method': method, 'params': params or {}}
    if session:
      msg['sessionId'] = session
    self.ws.send(json.dumps(msg))
    while True:
      reply = json.loads(self.ws.recv())
      if reply.get('id') == self._id:
        if 'error' in reply:
          raise RuntimeError(f'{method}: {reply["error"]}')
        return reply.get('result', {})
      self.events.append(reply)


class Page:
  """A browser tab: navigate, evaluate JavaScript, click and type like a user."""

  def __init__(self, cdp: Cdp, session: str):
    self.cdp, self.session = cdp, session

  def call(self, method: str, params: dict | None = None) -> dict:
    return self.cdp.call(method, params, self.session)

  def js(self, expression: str):
    r = self.call('Runtime.evaluate', {'expression': expression, 'returnByValue': True, 'awaitPromise': True})
    if 'exceptionDetails' in r:
      raise RuntimeError(f'JS error in {expression[:80]!r}: {r["exceptionDetails"]}')
    return r['result'].get('value')

  def wait(self, expression: str, timeout: float = 10.0):
    """Polls until the expression is truthy (an exception counts as not yet: the page may still be loading)."""
    end = time.monotonic() + timeout
    guarded = f'(() => {{ try {{ return ({expression}); }} catch (e) {{ return null; }} }})()'
    while time.monotonic() < end:
      value = self.js(guarded)
      if value:
        return value
      time.sleep(0.01)
    raise TimeoutError(f'waited {timeout} s for {expression!r}')

  def click(self, selector: str) -> None:
    """A real mouse press and release at the centre of the element (it must be visible and on top)."""
    box = self.js(f'(() => {{ const r = document.querySelector({json.dumps(selector)}).getBoundingClientRect();'
                  ' return [r.x + r.width / 2, r.y + r.height / 2]; })()')
    for kind in ('mousePressed', 'mouseReleased'):
      self.call('Input.dispatchMouseEvent', {'type': kind, 'x': box[0], 'y': box[1], 'button': 'left',
                                             'clickCount': 1})

  def key(self, char: str) -> None:
    for kind in ('keyDown', 'keyUp'):
      self.call('Input.dispatchKeyEvent', {'type': kind, 'key': char, 'text': char if kind == 'keyDown' else '',
                                           'code': f'Digit{char}' if char.isdigit() else char})


class Chromium:
  """`with Chromium(binary, download_dir) as page:` a headless browser with one tab, closed on exit."""

  def __init__(self, binary: str, download_dir: str, size=(1280, 900)):
    self.binary, self.download_dir, self.size = binary, download_dir, size

  def __enter__(self) -> Page:
    self.profile = tempfile.mkdtemp(prefix='study-chromium-')
    # --no-sandbox: CI and containers run as root, where Chromium's sandbox refuses to start.
    self.proc = subprocess.Popen(
        [self.binary, '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run',
         '--no-default-browser-check', '--disable-extensions', '--remote-debugging-port=0',
         f'--user-data-dir={self.profile}',
         f'--window-size={self.size[0]},{self.size[1]}', 'about:blank'],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    port_file = os.path.join(self.profile, 'DevToolsActivePort')
    end = time.monotonic() + 20
    while not (os.path.exists(port_file) and len(open(port_file).read().split()) >= 2):
      if time.monotonic() > end or self.proc.poll() is not None:
        self.__exit__(None, None, None)
        raise RuntimeError(f'{self.binary} did not start a DevTools endpoint')
      time.sleep(0.05)
    port, path = open(port_file).read().split()[:2]
    self.cdp = Cdp(WebSocket(f'ws://127.0.0.1:{port}{path}'))
    self.cdp.call('Browser.setDownloadBehavior', {'behavior': 'allow', 'downloadPath': self.download_dir})
    target = self.cdp.call('Target.createTarget', {'url': 'about:blank'})['targetId']
    session = self.cdp.call('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
    page = Page(self.cdp, session)
    page.call('Page.enable')
    page.call('Runtime.enable')
    return page

  def __exit__(self, *exc) -> None:
    try:
      if getattr(self, 'cdp', None):
        self.cdp.call('Browser.close')
    except (OSError, ConnectionError, RuntimeError):
      pass
    if self.proc.poll() is None:
      self.proc.terminate()
    try:
      self.proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
      self.proc.kill()
    shutil.rmtree(self.profile, ignore_errors=True)
