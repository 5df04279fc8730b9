"""Images given as http(s) URLs: downloaded with a timeout and a size limit, then read under
the same limits as files (tested against a loopback server, never the network)."""
from __future__ import annotations

import io
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from visprog.errors import ImageError
from visprog.values import images
from visprog.values.images import load_image


def _png(size=(32, 24), color=(200, 10, 10)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


class _Handler(BaseHTTPRequestHandler):
    routes: dict = {}

    def do_GET(self):  # noqa: N802 - http.server's name
        route = self.routes.get(self.path)
        if route is None:
            self.send_error(404, "Not Found")
            return
        route(self)

    def log_message(self, *args):  # keep the test output quiet
        pass


@pytest.fixture
def server():
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", _Handler.routes
    _Handler.routes.clear()
    httpd.shutdown()
    httpd.server_close()


def _send(body: bytes, ctype: str = "image/png", length: bool = True):
    def route(h):
        h.send_response(200)
        h.send_header("Content-Type", ctype)
        if length:
            h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)
    return route


def test_an_http_url_reads_as_the_image(server):
    url, routes = server
    routes["/cat.png"] = _send(_png())
    im = load_image(url + "/cat.png")
    assert im.size == (32, 24) and im.mode == "RGB"
    assert im.getpixel((0, 0)) == (200, 10, 10)


def test_a_missing_url_names_the_status(server):
    url, _ = server
    with pytest.raises(ImageError, match="HTTP 404"):
        load_image(url + "/nope.jpg")


def test_a_url_that_is_not_an_image(server):
    url, routes = server
    routes["/page"] = _send(b"<html>hello</html>", "text/html")
    with pytest.raises(ImageError, match="not an image"):
        load_image(url + "/page")


def test_a_url_image_gets_the_same_pixel_limits(server):
    url, routes = server
    routes["/big.png"] = _send(_png((300, 300)))
    with pytest.raises(ImageError, match="over the limit of 1,000"):
        load_image(url + "/big.png", max_pixels=1000)


def test_a_body_over_the_byte_limit_is_refused(server):
    url, routes = server
    routes["/huge"] = _send(b"x" * 5000)
    with pytest.raises(ImageError, match="over the limit of 1,000"):
        images._download(url + "/huge", max_bytes=1000)
    # without a Content-Length the body is read up to the limit, not further
    routes["/unsized"] = _send(b"x" * 5000, length=False)
    with pytest.raises(ImageError, match="over the limit of 1,000 bytes"):
        images._download(url + "/unsized", max_bytes=1000)


def test_a_server_that_never_answers_times_out(server):
    url, routes = server

    def hang(h):
        time.sleep(3)
    routes["/hang"] = hang
    t0 = time.monotonic()
    with pytest.raises(ImageError, match="could not download"):
        images._download(url + "/hang", timeout=0.5)
    assert time.monotonic() - t0 < 2.5


def test_an_unreachable_host_is_a_clear_error():
    with pytest.raises(ImageError, match="could not download image http://127.0.0.1:9/"):
        load_image("http://127.0.0.1:9/a.jpg")


@pytest.mark.parametrize("source", ["ftp://example.com/a.jpg", "file:///etc/passwd",
                                    "s3://bucket/a.jpg"])
def test_other_schemes_are_refused_clearly(source):
    with pytest.raises(ImageError, match="can't read an image from a .*:// address"):
        load_image(source)


def test_vp_execute_reads_a_url(server):
    from visprog import VisProg
    url, routes = server
    routes["/a.png"] = _send(_png((40, 30)))
    vp = VisProg(preset="tiny", cache=False)
    out = vp.execute("B=Loc(image=IMAGE, object='LEFT')\nN=Count(box=B)",
                     image=url + "/a.png")
    assert out.value == 1
