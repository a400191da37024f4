# Berth as a container image, from the static binary and dashboard build that `cargo xtask dist`
# puts in dist/.
# (No base image is needed: the binary is statically linked.)
FROM scratch
COPY dist/berth /berth
# The dashboard's wasm and JS, where berth looks by default (`site/` next to the binary).
COPY dist/site /site
ENV BERTH_DATA_DIR=/data BERTH_LISTEN=0.0.0.0:7878
VOLUME /data
EXPOSE 7878 8080
ENTRYPOINT ["/berth"]
CMD ["server"]
