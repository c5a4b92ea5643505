# fig8_lm.gp: Figure 8, byte-level language modelling: validation bits per
# byte against training FLOPs (log x; train/flops, the 6N rule plus softmax
# attention), one line per mixer, one point per training budget (each its
# own run), mean over seeds with min-max bars.
load 'common.gp'
width = 800
height = 520

do for [fmt in formats] {
    eval term_cmd(fmt)
    set output out . '.' . fmt
    eval set_caption
    set title 'Byte-level LM (Tiny Shakespeare): validation bits per byte against training FLOPs'
    set logscale x 10
    # the data's range, not the enclosing decades
    set autoscale xfix
    set offsets graph 0.04, graph 0.04, 0, 0
    set format x '%.0s%c'
    set xtics add (2e9, 5e9, 2e10, 5e10, 2e11, 5e11, 2e12, 5e12, 2e13, 5e13)
    set xlabel 'training FLOPs (train/flops)'
    set ylabel 'validation bits per byte'
    set bmargin 6
    set key outside right top box
    plot for [j = 1:n_series] datafile(1, j) using 1:2:4:5 with yerrorlines lw 1.5 \
            lc rgb colour(j) pt ptype(j) title label_of(word(series, j))
    unset output
}
