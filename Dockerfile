# Switchyard agent image.
#
#   docker build -t ghcr.io/switchyard-lb/switchyard:0.1.0 .
#
# The build stage runs the same steps as on a development machine
# (scripts/bootstrap.sh, then `cargo xtask image-root`); the test suite runs
# them too and checks the resulting tree (tests/tests/image.rs), so the image
# content is tested even where no image can be built.

FROM debian:bookworm AS build
WORKDIR /src
COPY . .
RUN ./scripts/bootstrap.sh \
 && PATH="/root/.cargo/bin:$PATH" cargo xtask image-root --release --out /image-root

# Runtime: the binary, the BPF object, and bpftool for looking at the maps
# from a node debug pod (`kubectl debug node/N --profile=sysadmin`; the agent
# container itself lacks the CAP_SYS_ADMIN that reading BTF needs).
FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends bpftool iproute2 ca-certificates \
 && rm -rf /var/lib/apt/lists/*
COPY --from=build /image-root/ /
ENTRYPOINT ["/usr/bin/switchyard"]
CMD ["agent"]
