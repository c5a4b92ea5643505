# fig1_mqar.gp: Figure 1, MQAR accuracy against model width (the shape of
# Zoology's Figure 2). One panel per (L, N), one line per mixer: at each
# width the mean over seeds at the learning rate whose mean is best, with
# error bars from the lowest to the highest seed. Data and variables from
# plots/figures.sh (see common.gp).
load 'common.gp'
width = n_panels > 1 ? 330 * n_panels + 70 : 600
height = 440

do for [fmt in formats] {
    eval term_cmd(fmt)
    set output out . '.' . fmt
    set multiplot layout 1, n_panels title 'MQAR: test accuracy against d_model (best learning rate per point; bars: min to max over seeds)' \
        margins 0.07, 0.98, 0.2, 0.76 spacing 0.035, 0
    do for [i = 1:n_panels] {
        if (i == 1) { eval set_caption } else { unset label 100 }
        set title label_of(word(panels, i))
        set logscale x 2
        set xrange [*:*]
        set yrange [0:1.05]
        set xlabel 'd_model'
        set ylabel (i == 1 ? 'test accuracy' : '')
        unset key
        plot for [j = 1:n_series] datafile(i, j) using 1:2:4:5 with yerrorlines lw 1.5 \
            lc rgb colour(j) pt ptype(j) notitle
    }
    eval shared_key
    plot for [j = 1:n_series] 2 with linespoints lw 1.5 lc rgb colour(j) pt ptype(j) \
        title label_of(word(series, j))
    unset multiplot
    unset output
}
