# fig5_cost.gp: Figure 5, cost against sequence length: measured training time
# per token (microseconds; 1 / train/tokens_per_s) and FLOPs per token
# (train/flops_per_token) against L, log-log, one line per mixer, with the
# exponent b of y = a L^b fitted by memlab fit and stored (dir/fit_time.dat,
# dir/fit_flops.dat: "mixer b b_err a") in each legend entry and as a dashed
# line.
load 'common.gp'
series = labels_in(dir . '/time/series.txt')
n_series = words(series)
width = 1080
height = 480
fb(f, s) = real(lookup(f, s, 2))
fe(f, s) = real(lookup(f, s, 3))
fa(f, s) = real(lookup(f, s, 4))
# the smallest and largest y of a data directory (column 2 of every file),
# for a y range with room for the key above the lines
yext(d, what) = real(system(sprintf("cat %s/p1_s*.dat | awk 'NR == 1 || $2 < lo { lo = $2 } NR == 1 || $2 > hi { hi = $2 } END { print %s }'", d, what)))

do for [fmt in formats] {
    eval term_cmd(fmt)
    set output out . '.' . fmt
    set multiplot layout 1, 2 title 'Cost per token against sequence length L (log-log; legend: fitted exponent b of y = a L^b)' \
        margins 0.07, 0.97, 0.2, 0.84 spacing 0.08, 0
    eval set_caption
    set title 'measured training time per token (one thread)'
    set logscale xy 2
    set xlabel 'L'
    set ylabel 'microseconds per token'
    set key top left box opaque
    set yrange [1e6 * yext(dir . '/time', 'lo') / 1.3 : 1e6 * yext(dir . '/time', 'hi') * 5]
    tf = dir . '/fit_time.dat'
    plot for [j = 1:n_series] datafile_in(dir . '/time', 1, j) using 1:($2 * 1e6) with linespoints lw 1.5 \
            lc rgb colour(j) pt ptype(j) \
            title sprintf('%s  b = %.2f ± %.2f', label_of(word(series, j)), fb(tf, word(series, j)), fe(tf, word(series, j))), \
         for [j = 1:n_series] 1e6 * fa(tf, word(series, j)) * x**fb(tf, word(series, j)) with lines dt 3 \
            lc rgb colour(j) notitle
    unset label 100
    set title "FLOPs per token: 6N rule + softmax attention\n(state products of the other mixers not counted)"
    set logscale y 10
    set format y '%.1s%c'
    set yrange [yext(dir . '/flops', 'lo') / 1.3 : yext(dir . '/flops', 'hi') * 5]
    set ylabel 'FLOPs per token'
    ff = dir . '/fit_flops.dat'
    plot for [j = 1:n_series] datafile_in(dir . '/flops', 1, j) using 1:2 with linespoints lw 1.5 \
            lc rgb colour(j) pt ptype(j) \
            title sprintf('%s  b = %.2f ± %.2f', label_of(word(series, j)), fb(ff, word(series, j)), fe(ff, word(series, j)))
    unset multiplot
    unset output
}
