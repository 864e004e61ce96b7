# Build a static litefs binary, then ship it in a slim image with fuse3.
#
#   docker build -t litefs .
#   docker run --device /dev/fuse --cap-add SYS_ADMIN -v $PWD/litefs.yml:/etc/litefs.yml litefs
#
# To add litefs to an application image instead:
#   COPY --from=litefs /usr/local/bin/litefs /usr/local/bin/litefs
#   RUN apt-get update && apt-get install -y fuse3 ca-certificates
FROM golang:1.24-bookworm AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=development
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.Version=${VERSION}" -o /out/litefs ./cmd/litefs

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends fuse3 ca-certificates sqlite3 \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /out/litefs /usr/local/bin/litefs
COPY litefs.yml.example /usr/share/doc/litefs/litefs.yml.example
VOLUME /var/lib/litefs
EXPOSE 20202
ENTRYPOINT ["litefs"]
CMD ["mount"]
