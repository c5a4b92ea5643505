# fig6_memcache.gp: Figure 6, Memory Caching: MQAR test accuracy against the
# segment length (log x), mean over seeds with min-max bars, between the
# baselines at the same settings drawn as horizontal lines (their mean over
# seeds): softmax attention and linear attention. dir/acc, dir/base from
# aggregate.awk; seq_len is L (a segment of L tokens is linear attention).
load 'common.gp'
if (!exists("seq_len")) seq_len = 0
base_series = labels_in(dir . '/base/series.txt')
n_base = words(base_series)
width = 780
height = 520

do for [fmt in formats] {
    eval term_cmd(fmt)
    set output out . '.' . fmt
    eval set_caption
    set title sprintf("Memory Caching (GRM over linear-attention memories)\naccuracy against segment length, L = %d", seq_len)
    set logscale x 2
    # headroom above 1 for the key
    set yrange [0:1.32]
    set ytics 0, 0.2, 1
    set xlabel 'segment length (tokens)'
    set ylabel 'test accuracy'
    set bmargin 6
    set key top center Left reverse samplen 2 box opaque
    plot datafile_in(dir . '/acc', 1, 1) using 1:2:4:5 with yerrorlines lw 2 lc rgb colour(1) pt 7 \
            title 'memcache (bars: min to max over seeds)', \
         for [j = 1:n_base] real(field(datafile_in(dir . '/base', 1, j), 1, 2)) with lines lw 2 dt 2 \
            lc rgb colour(j + 1) title label_of(word(base_series, j)) . ' (baseline)'
    unset output
}
