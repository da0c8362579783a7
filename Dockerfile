# blockd in a container: the same install step as README's first command.
# Run:  docker run -v blockd-run:/run/blockd -v /srv/images:/srv/images blockd
# The QMP monitor socket appears in the volume as /run/blockd/qmp.sock.
FROM python:3.11-slim

WORKDIR /opt/blockd
COPY pyproject.toml setup.py README.md ./
COPY blockd ./blockd
COPY schema ./schema
RUN pip install --no-cache-dir .

VOLUME ["/run/blockd"]
ENTRYPOINT ["blockd"]
CMD ["--chardev", "socket,path=/run/blockd/qmp.sock,server=on,wait=off,id=m0", "--monitor", "chardev=m0"]
