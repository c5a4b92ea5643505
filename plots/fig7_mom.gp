# fig7_mom.gp: Figure 7, Mixture-of-Memories: MQAR test accuracy against the
# number of routed memories E (log x), one line per top-K, mean over seeds
# with min-max bars.
load 'common.gp'
width = 700
height = 480

do for [fmt in formats] {
    eval term_cmd(fmt)
    set output out . '.' . fmt
    eval set_caption
    set title 'Mixture-of-Memories: accuracy against the number of memories E and top-K'
    set logscale x 2
    set yrange [0:1.05]
    set xlabel 'routed memories E (plus one shared memory)'
    set ylabel 'test accuracy'
    set bmargin 6
    set key top right box opaque
    plot for [j = 1:n_series] datafile(1, j) using 1:2:4:5 with yerrorlines lw 1.5 \
            lc rgb colour(j) pt ptype(j) title 'top-' . label_of(word(series, j))
    unset output
}
