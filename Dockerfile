# Berth as a container image, from the static binary that `cargo xtask dist` puts in dist/.
# (No base image is needed: the binary is statically linked.)
FROM scratch
COPY dist/berth /berth
ENV BERTH_DATA_DIR=/data BERTH_LISTEN=0.0.0.0:7878
VOLUME /data
EXPOSE 7878 8080
ENTRYPOINT ["/berth"]
CMD ["server"]
