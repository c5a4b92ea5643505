# fig4_probe.gp: Figure 4, capacity and interference (training-free probe):
# relative squared error of the reads (log-log) and top-1 retrieval accuracy
# against N/d for each memory, mean over seeds with min-max bars, and the
# sum rule's theory line (N - 1)/d. dir/err and dir/top1 from aggregate.awk;
# dim is d.
load 'common.gp'
if (!exists("dim")) dim = 64
series = labels_in(dir . '/err/series.txt')
n_series = words(series)
width = 1000
height = 460

do for [fmt in formats] {
    eval term_cmd(fmt)
    set output out . '.' . fmt
    set multiplot layout 1, 2 title sprintf('Capacity and interference: N random unit key-value pairs in a memory of width d = %d', dim) \
        margins 0.08, 0.98, 0.2, 0.76 spacing 0.09, 0
    eval set_caption
    set title 'relative squared error of the reads'
    set logscale xy 2
    set xlabel 'N / d'
    set ylabel 'sum |read - v|^2 / sum |v|^2'
    unset key
    plot for [j = 1:n_series] datafile_in(dir . '/err', 1, j) using 1:2:4:5 with yerrorlines lw 1.5 \
            lc rgb colour(j) pt ptype(j) notitle, \
         (x - 1.0 / dim > 0 ? x - 1.0 / dim : NaN) with lines lw 2 dt 2 lc rgb '#000000' notitle
    unset label 100
    set title 'top-1 retrieval accuracy'
    unset logscale y
    set yrange [0:1.05]
    set ylabel 'top-1 accuracy'
    plot for [j = 1:n_series] datafile_in(dir . '/top1', 1, j) using 1:2:4:5 with yerrorlines lw 1.5 \
            lc rgb colour(j) pt ptype(j) notitle
    eval shared_key
    plot for [j = 1:n_series] 2 with linespoints lw 1.5 lc rgb colour(j) pt ptype(j) \
            title label_of(word(series, j)), \
         2 with lines lw 2 dt 2 lc rgb '#000000' title '(N-1)/d'
    unset multiplot
    unset output
}
